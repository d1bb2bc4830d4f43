"""Tiny configs and randomised params shared by the model tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models import BertConfig, LlamaConfig

TINY_LLAMA = LlamaConfig(vocab_size=61, hidden=24, intermediate=40, num_layers=2, num_heads=6, num_kv_heads=2,
                         rope_base=10000.0, rms_eps=1e-5)
TINY_BERT = BertConfig(vocab_size=53, hidden=16, intermediate=40, num_layers=2, num_heads=4, max_positions=32,
                       type_vocab_size=2, ln_eps=1e-12)


def randomize(params, rng: np.random.Generator):
  """Every leaf redrawn: norm scales 1 +- noise, biases/other leaves noise, kernels ~ N(0, 1/in)."""
  def draw(path, x):
    name = jax.tree_util.keystr(path)
    shape = tuple(x.shape)
    if "scale" in name:
      v = 1.0 + 0.3 * rng.standard_normal(shape)
    elif "kernel" in name:
      v = rng.standard_normal(shape) / np.sqrt(shape[0])
    else:
      v = 0.5 * rng.standard_normal(shape)
    return jnp.asarray(v, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, params)
