"""Tiny models and a byte-level tokenizer for the interop tests."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jquant as jq
from jquant.models import BertConfig, LlamaConfig, MiniLM, SmolLM2
from tests.models.helpers import randomize


def byte_tokenizer():
  """A byte-level BPE with no merges: 256 tokens, one per byte (any text encodes)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  return tk


def tiny_llama(rng, **kw) -> tuple[SmolLM2, dict]:
  cfg = LlamaConfig(**{**dict(vocab_size=256, hidden=32, intermediate=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              rope_base=10000.0, rms_eps=1e-5), **kw})
  m = SmolLM2(cfg, tokenizer=byte_tokenizer())
  return m, randomize(m.init(jax.random.key(0)), rng)


def tiny_bert(rng) -> tuple[MiniLM, dict]:
  m = MiniLM(BertConfig(vocab_size=53, hidden=16, intermediate=32, num_layers=2, num_heads=4, max_positions=32))
  return m, randomize(m.init(jax.random.key(0)), rng)


def quantize_kernels(params, rng, spec_of, act_order: bool = False):
  """Quantizes every block kernel with ``spec_of(path)`` (None = keep float); act-order adds a random g_idx."""
  def q(path, x):
    name = jax.tree_util.keystr(path)
    spec = spec_of(name) if "kernel" in name and "layer" in name else None
    if spec is None:
      return x
    qa = jq.quantize(x, spec)
    if act_order:
      g = spec.granularity.size
      qa = dataclasses.replace(qa, g_idx=jnp.asarray((np.argsort(rng.permutation(x.shape[0])) // g).astype(np.int32)))
    return qa
  return jax.tree_util.tree_map_with_path(q, params)


def leaves_equal(a, b) -> None:
  """Every leaf bit-identical (QArrays: codes, scales, zero points, g_idx, qtype, granularity)."""
  fa = jax.tree_util.tree_flatten_with_path(a, is_leaf=lambda x: isinstance(x, jq.QArray))[0]
  fb = dict(jax.tree_util.tree_flatten_with_path(b, is_leaf=lambda x: isinstance(x, jq.QArray))[0])
  assert [p for p, _ in fa] == list(fb), "trees differ"
  for p, x in fa:
    y = fb[p]
    if isinstance(x, jq.QArray):
      assert isinstance(y, jq.QArray), p
      assert x.qtype == y.qtype and x.spec.granularity == y.spec.granularity and x.qvalue.dtype == y.qvalue.dtype, p
      np.testing.assert_array_equal(np.asarray(x.qvalue).astype(np.int32), np.asarray(y.qvalue).astype(np.int32))
      np.testing.assert_array_equal(np.asarray(x.scale, np.float32), np.asarray(y.scale, np.float32))
      for f in ("zero_point", "g_idx"):
        u, v = getattr(x, f), getattr(y, f)
        assert (u is None) == (v is None), (p, f)
        if u is not None:
          np.testing.assert_array_equal(np.asarray(u).astype(np.int32), np.asarray(v).astype(np.int32))
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))
