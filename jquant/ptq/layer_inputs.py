"""Inputs of every linear layer (a module with a ``kernel`` param) in a float forward pass (for per-layer error reports)."""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from jquant.core.paths import join


def capture_linear_inputs(model, params, batches) -> dict[str, np.ndarray]:
  """Inputs (flattened to (tokens, in), concatenated over batches) of every module with a ``kernel`` param in a
  float forward pass."""
  seen: dict[str, list[np.ndarray]] = {}

  def grab(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and context.module.has_variable("params", "kernel") and args:
      x = args[0]
      seen.setdefault(join(context.module.path), []).append(np.asarray(x.reshape(-1, x.shape[-1])))
    return next_fun(*args, **kwargs)

  for b in batches:
    with nn.intercept_methods(grab):
      model.apply(params, b)
  return {k: np.concatenate(v) for k, v in seen.items()}
