"""Inputs of every `jquant.models.layers.Linear` in a float forward pass (for per-layer error reports)."""

from __future__ import annotations

import flax.linen as nn
import numpy as np


def capture_linear_inputs(model, params, batches) -> dict[str, np.ndarray]:
  """Inputs (flattened to (tokens, in), concatenated over batches) of every Linear in a float forward pass."""
  from jquant.models.layers import Linear  # pylint: disable=import-outside-toplevel
  seen: dict[str, list[np.ndarray]] = {}

  def grab(next_fun, args, kwargs, context):
    if isinstance(context.module, Linear) and context.method_name == "__call__":
      x = args[0]
      seen.setdefault("/".join(context.module.path), []).append(np.asarray(x.reshape(-1, x.shape[-1])))
    return next_fun(*args, **kwargs)

  for b in batches:
    with nn.intercept_methods(grab):
      model.apply(params, b)
  return {k: np.concatenate(v) for k, v in seen.items()}
