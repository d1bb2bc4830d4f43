"""A tiny random Llama (varied enough that greedy decoding does not collapse at once) and a reference decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models import LlamaConfig, SmolLM2

TINY = LlamaConfig(vocab_size=67, hidden=32, intermediate=48, num_layers=2, num_heads=4, num_kv_heads=2,
                   rope_base=10000.0, rms_eps=1e-5)


_MODELS: dict = {}


def tiny_model(rng: np.random.Generator, config: LlamaConfig = TINY, kernel_scale: float = 2.0):
  """(SmolLM2 wrapper, float32 params) with every leaf drawn from ``rng`` (the param structure comes from an
  abstract init, so no init program is compiled); kernels ~ N(0, kernel_scale^2 / in)."""
  if config not in _MODELS:
    model = SmolLM2(config)
    _MODELS[config] = (model, jax.eval_shape(lambda: model.module.init(jax.random.key(0),
                                                                       jnp.zeros((1, 4), jnp.int32))["params"]))
  model, params = _MODELS[config]

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    shape = tuple(x.shape)
    if "scale" in name:
      v = 1.0 + 0.2 * rng.standard_normal(shape)
    elif "kernel" in name:
      v = kernel_scale * rng.standard_normal(shape) / np.sqrt(shape[0])
    else:
      v = rng.standard_normal(shape)
    return jnp.asarray(v, jnp.float32)

  return model, jax.tree_util.tree_map_with_path(draw, params)


def reference_greedy(model, params, prompt: np.ndarray, n: int) -> np.ndarray:
  """(B, n) greedy tokens from full (non-cached) forwards over the growing sequence (fixed buffer, one compile)."""
  prompt = np.asarray(prompt, np.int32)
  bsz, t0 = prompt.shape
  buf = np.zeros((bsz, t0 + n), np.int32)
  buf[:, :t0] = prompt
  fwd = jax.jit(model.apply)
  for i in range(n):
    logits = fwd(params, jnp.asarray(buf))
    buf[:, t0 + i] = np.asarray(jnp.argmax(logits[:, t0 + i - 1], axis=-1))
  return buf[:, t0:]
