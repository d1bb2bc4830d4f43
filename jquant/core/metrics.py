"""Quantization quality metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def sqnr(ref: jax.Array, approx: jax.Array) -> jax.Array:
  """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - approx)^2), in float32.

  +inf when ``approx == ref``.
  """
  ref = jnp.asarray(ref, jnp.float32)
  err = ref - jnp.asarray(approx, jnp.float32)
  return 10.0 * (jnp.log10(jnp.sum(ref * ref)) - jnp.log10(jnp.sum(err * err)))


def quant_error(x: jax.Array, spec) -> jax.Array:
  """Mean squared error of quantize->dequantize of ``x`` under ``spec`` (float32 scalar)."""
  from jquant.core.quantize import dequantize, quantize
  x = jnp.asarray(x)
  return jnp.mean(jnp.square(x.astype(jnp.float32) - dequantize(quantize(x, spec), jnp.float32)))
