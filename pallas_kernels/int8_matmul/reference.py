"""The jnp specification of the W8A8 matmul and of dynamic per-token int8 activation quantization.

Layout: x int8 (M, K); w int8 (N, K), K-contiguous (the layout cuBLASLt and the kernel want); x_scale float32
(M, 1) per token (or (1, 1) per tensor); w_scale float32 (1, N) per output channel (or (1, 1)).
``out = (x @ w.T) * x_scale * w_scale`` with exact int32 accumulation (``reference``, shared with fp8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._scaled_matmul import INT8_QMAX, INT8_QMIN
from pallas_kernels._scaled_matmul import reference as reference


def quantize_per_token(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric per-row int8 quantization: ``scale = absmax / 127`` (1 for an all-zero row),
  ``q = clip(round_half_even(x / scale), -128, 127)``.

  Args:
    x: (M, K) float.

  Returns:
    (q int8 (M, K), scale float32 (M, 1)).
  """
  xf = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(xf), axis=1, keepdims=True)
  scale = jnp.where(amax > 0, amax / INT8_QMAX, 1.0)
  q = jnp.clip(jnp.round(xf / scale), INT8_QMIN, INT8_QMAX).astype(jnp.int8)
  return q, scale


def reference_dynamic(
    x: jax.Array, w: jax.Array, w_scale: jax.Array, *, out_dtype: jnp.dtype | None = None
) -> jax.Array:
  """Quantizes float x (M, K) per token (``quantize_per_token``), then ``reference``; out dtype defaults to x's."""
  q, s = quantize_per_token(x)
  return reference(q, w, s, w_scale, out_dtype=out_dtype or x.dtype)
