"""Evaluation through the cache: float-cache logits == the model's forward, int8 / fp8 cache perplexity deltas,
and the weight + cache memory of W4A16 with an int8 cache vs bf16 (SmolLM2-135M shapes, computed abstractly)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.eval.perplexity import window_nll
from jquant.inference.cached_eval import cached_logits, cached_perplexity, params_nbytes
from jquant.inference.generation import generate, new_cache
from jquant.inference.kv_cache import KVCacheConfig, cache_nbytes
from jquant.inference.sampling import SamplingConfig
from jquant.models import LlamaConfig, SmolLM2
from tests.inference.helpers import TINY, tiny_model


def test_float_cache_logits_equal_forward(rng):
  model, params = tiny_model(rng)
  ids = rng.integers(0, TINY.vocab_size, (2, 11)).astype(np.int32)
  got = cached_logits(model, params, ids)
  ref = model.apply(params, jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=2e-4, atol=2e-4)


def test_quantized_cache_perplexity_close(rng):
  # A mild random model (softened head) scored on text it samples itself, so its perplexity is moderate.
  model, params = tiny_model(rng, kernel_scale=1.0)
  params = dict(params, norm={"scale": params["norm"]["scale"] * 0.3})
  prompt = rng.integers(0, TINY.vocab_size, (4, 1)).astype(np.int32)
  key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
  text = generate(model, params, prompt, max_new_tokens=47, sampling=SamplingConfig(temperature=1.0), key=key)
  ids = np.concatenate([prompt, np.asarray(text.tokens)], axis=1)
  run = lambda d: cached_perplexity(model, params, KVCacheConfig(d), ids=ids.reshape(-1), windows=4, seq_len=48,
                                    batch_size=4)
  base, i8, f8 = run("float32"), run("int8"), run("fp8_e4m3")
  ref = window_nll(model.apply(params, jnp.asarray(ids)), jnp.asarray(ids))
  np.testing.assert_allclose(base.nll, float(np.sum(np.asarray(ref, np.float64))), rtol=1e-5)
  assert 1.2 < base.ppl < 20, base.ppl
  assert abs(i8.ppl / base.ppl - 1) < 0.005, (i8.ppl, base.ppl)
  assert abs(f8.ppl / base.ppl - 1) < 0.01, (f8.ppl, base.ppl)
  assert i8.nll != base.nll and f8.nll != base.nll      # the quantized caches really are quantized


def _abstract_quantized(params, spec_for):
  def q(path, leaf):
    spec = spec_for(jax.tree_util.keystr(path))
    return leaf if spec is None else jax.eval_shape(lambda w: jq.quantize(w, spec), leaf)
  return jax.tree_util.tree_map_with_path(q, params)


def test_w4a16_int8_cache_memory_vs_bf16():
  cfg = LlamaConfig()                                  # SmolLM2-135M shapes
  model = SmolLM2(cfg)
  params = jax.eval_shape(lambda: model.module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
  w4 = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=64))
  w4_emb = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=1, size=64))
  spec_for = lambda p: w4 if "kernel" in p else (w4_emb if "embedding" in p else None)
  w4a16 = _abstract_quantized(bf16, spec_for)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert params_nbytes(bf16) == 2 * n_params
  kernel_elems = sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(params)
                     if "kernel" in jax.tree_util.keystr(p) or "embedding" in jax.tree_util.keystr(p))
  other = n_params - kernel_elems
  assert params_nbytes(w4a16) == kernel_elems // 2 + 4 * (kernel_elems // 64) + 2 * other
  ctx = 2048
  c16 = jax.eval_shape(lambda: new_cache(cfg, KVCacheConfig("bfloat16"), 1, ctx))
  c8 = jax.eval_shape(lambda: new_cache(cfg, KVCacheConfig("int8"), 1, ctx))
  kv_elems = 2 * cfg.num_layers * ctx * cfg.num_kv_heads * cfg.head_dim
  assert cache_nbytes(c16) == 2 * kv_elems and cache_nbytes(c8) == kv_elems + 4 * kv_elems // cfg.head_dim
  ratio = (params_nbytes(w4a16) + cache_nbytes(c8)) / (params_nbytes(bf16) + cache_nbytes(c16))
  assert ratio <= 0.35, ratio


def test_bad_eval_inputs(rng):
  model, params = tiny_model(rng)
  with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
    cached_perplexity(model, params, ids=np.arange(40), windows=2, seq_len=8, batch_size=0)
  with pytest.raises(ValueError, match=r"too short for 9 windows"):
    cached_perplexity(model, params, ids=np.arange(40), windows=9, seq_len=8)
  with pytest.raises(ValueError, match=r"\(B, T\) integer array"):
    cached_logits(model, params, np.zeros((2, 3), np.float32))
  with pytest.raises(TypeError, match=r"KVCacheConfig"):
    cached_logits(model, params, np.zeros((1, 3), np.int32), "int8")
