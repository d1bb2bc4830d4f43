"""Tiny random models with activation outliers and calibration batches for the PTQ pipeline tests."""

from __future__ import annotations

import functools

import jax
import numpy as np

import jquant as jq
from jquant.models import MiniLM, SmolLM2
from tests.models.helpers import TINY_BERT, TINY_LLAMA, randomize

# norm scales with a few large channels: the activation outliers AWQ / SmoothQuant are about
_OUTLIER = 6.0


def _outliers(params, rng, norm_names):
  def bump(path, x):
    name = jax.tree_util.keystr(path)
    if any(n in name for n in norm_names) and name.endswith("['scale']"):
      idx = rng.choice(x.shape[0], size=max(1, x.shape[0] // 8), replace=False)
      return x.at[idx].multiply(_OUTLIER)
    return x
  return jax.tree_util.tree_map_with_path(bump, params)


@functools.lru_cache(maxsize=None)
def _model_and_template(kind, config):
  """One model object and param template per config, so that compiled programs are reused across tests (every
  param value is redrawn per test by `randomize`)."""
  model = SmolLM2(config) if kind == "llama" else MiniLM(config)
  return model, model.init(jax.random.key(0))


def tiny_llama(rng, config=TINY_LLAMA):
  model, template = _model_and_template("llama", config)
  params = randomize(template, rng)
  return model, _outliers(params, rng, ("input_layernorm", "post_attention_layernorm"))


def tiny_bert(rng):
  model, template = _model_and_template("bert", TINY_BERT)
  params = randomize(template, rng)
  return model, _outliers(params, rng, ("attention_layernorm", "output_layernorm", "LayerNorm"))


def llama_batches(rng, n=3, b=2, t=16, vocab=TINY_LLAMA.vocab_size):
  return [rng.integers(0, vocab, (b, t)).astype(np.int32) for _ in range(n)]


def bert_batches(rng, n=3, b=2, t=16, vocab=TINY_BERT.vocab_size):
  out = []
  for _ in range(n):
    ids = rng.integers(1, vocab, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[0, int(rng.integers(t // 2, t)):] = 0          # padded row: the pipeline must ignore padding
    out.append({"input_ids": ids, "attention_mask": mask})
  return out


def concat(batches):
  if isinstance(batches[0], dict):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  return np.concatenate(batches)


def spec(bits=4, group=8):
  qt = {4: jq.UINT4, 3: jq.UINT3, 8: jq.UINT8}[bits]
  return jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=group), symmetric=False)


def rel_err(model, params, qparams, batch, method=None):
  """Relative MSE of the quantized model's output vs the float one (float64)."""
  run = jq.ptq.runtime_model(model, method) if method is not None else model
  ref = np.asarray(model.forward_blockwise(params, batch), np.float64)
  out = np.asarray(run.forward_blockwise(qparams, batch), np.float64)
  return float(np.mean((ref - out) ** 2) / np.mean(ref ** 2))
