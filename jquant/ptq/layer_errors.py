"""Per-layer output errors of a running quantized model (``python -m jquant report DIR --recompute``).

`layer_errors` runs the model that a checkpoint runs -- its quantized params through ``model.apply`` with everything
the runtime applies (input scales, norms with folded scales, biases, the activation-quantizing matmul) -- on
calibration batches, and compares each linear's output with the float layer on the same input, taken in the float
model's coordinates: the input times the ``in_div`` a transform folded away, the output times its ``out_div``
(`jquant.report.LayerReport`). That is the measure `quantize_model` reports per layer, made on the runtime.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jquant.core.paths import get_in, join
from jquant.core.qarray import QArray
from jquant.report import energies, layer_output, sqnr_from_energies

__all__ = ["layer_errors"]


def layer_errors(model, params, qparams, batches, divisors: dict[str, dict] | None = None) -> dict[str, float]:
  """``{layer path: output SQNR (dB)}`` of every linear with a `QArray` kernel in ``model.apply(qparams, batch)``.

  Args:
    model: the runtime model (e.g. ``jquant.models.SmolLM2`` built with the checkpoint's matmul), whose linears are
      Flax modules with a ``kernel`` param called on their input.
    params: the float params (rotated ones for a rotated checkpoint), with the same paths as ``qparams``.
    qparams: the quantized params the model runs.
    batches: model batches (``model.apply(qparams, batch)``).
    divisors: ``{layer: {"in_div": (K,), "out_div": (N,)}}`` recorded by `quantize_model` (`PTQReport.divisors`).

  The SQNR is accumulated over every real token of every batch (float64 sums): a dict batch's ``attention_mask``
  drops the padding (as the pipeline's statistics do).
  """
  divisors = divisors or {}
  sums: dict[str, list[float]] = {}
  real: list = [None]

  def grab(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == "__call__" and args and mod.has_variable("params", "kernel") \
        and isinstance(mod.get_variable("params", "kernel"), QArray):
      path = join(mod.path)
      fp: Any = get_in(params, path)
      div = divisors.get(path, {})
      keep = real[0] if real[0] is not None and real[0].size == args[0].size // args[0].shape[-1] else None
      x = jnp.asarray(args[0], jnp.float32).reshape(-1, args[0].shape[-1])
      yq = jnp.asarray(y, jnp.float32).reshape(x.shape[0], -1)
      if keep is not None:
        x, yq = x[keep], yq[keep]
      ref = layer_output(fp, x * jnp.asarray(div["in_div"], jnp.float32) if "in_div" in div else x)
      if "out_div" in div:
        yq = yq * jnp.asarray(div["out_div"], jnp.float32)
      s, e = energies(ref, yq)
      acc = sums.setdefault(path, [0.0, 0.0])
      acc[0] += s
      acc[1] += e
    return y

  for b in batches:
    mask = b.get("attention_mask") if isinstance(b, dict) else None
    real[0] = None if mask is None else np.asarray(mask).reshape(-1) > 0
    with nn.intercept_methods(grab):
      model.apply(qparams, b)
  return {p: sqnr_from_energies(s, e) for p, (s, e) in sums.items()}
