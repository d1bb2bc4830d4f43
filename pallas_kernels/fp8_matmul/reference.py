"""The jnp specification of the FP8 x FP8 matmul.

Layout: x (M, K) float8_e4m3fn or float8_e5m2; w (N, K) float8, K-contiguous; x_scale float32 (M, 1) per row or
(1, 1) per tensor; w_scale float32 (1, N) per channel or (1, 1) per tensor.
``out = (float32(x) @ float32(w).T) * x_scale * w_scale`` with float32 accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reference(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
) -> jax.Array:
  """``(x @ w.T) * x_scale * w_scale`` in float32: fp8 x (M, K), fp8 w (N, K) -> (M, N) ``out_dtype``."""
  acc = jax.lax.dot_general(x.astype(jnp.float32), w.astype(jnp.float32), (((1,), (1,)), ((), ())),
                            precision=jax.lax.Precision.HIGHEST)
  return (acc * x_scale.astype(jnp.float32) * w_scale.astype(jnp.float32)).astype(out_dtype)
