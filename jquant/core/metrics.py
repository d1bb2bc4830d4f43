"""Quantization quality metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sqnr(ref: jax.Array, approx: jax.Array) -> jax.Array:
  """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - approx)^2), in float32.

  +inf when ``approx == ref``; NaN when either holds a NaN.

  Raises:
    ValueError: ``ref`` and ``approx`` differ in shape (no broadcasting: a metric of mismatched arrays is a bug).
  """
  from jquant.core.qarray import QArray  # pylint: disable=import-outside-toplevel
  if isinstance(ref, QArray) or isinstance(approx, QArray):
    raise TypeError("sqnr: got a QArray; compare float arrays, e.g. jq.sqnr(x, jq.dequantize(qa)).")
  if jnp.shape(ref) != jnp.shape(approx):
    raise ValueError(f"sqnr: ref has shape {jnp.shape(ref)} but approx has shape {jnp.shape(approx)}; pass arrays "
                     "of the same shape.")
  return _sqnr(ref, approx)


@jax.jit
def _sqnr(ref, approx):
  ref = jnp.asarray(ref, jnp.float32)
  err = ref - jnp.asarray(approx, jnp.float32)
  return 10.0 * (jnp.log10(jnp.sum(ref * ref)) - jnp.log10(jnp.sum(err * err)))


def quant_error(x: jax.Array, spec) -> jax.Array:
  """Mean squared error of quantize->dequantize of ``x`` under ``spec`` (float32 scalar)."""
  from jquant.core.quantize import dequantize, quantize
  x = jnp.asarray(x)
  return jnp.mean(jnp.square(x.astype(jnp.float32) - dequantize(quantize(x, spec), jnp.float32)))
