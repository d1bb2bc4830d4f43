"""FP8 matmul entry point: ``supports()`` and the fp8 operand rules; the kernel is ``_scaled_matmul``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels import _scaled_matmul as _scaled

Config = _common.TileConfig
default_config = _common.default_tile_config
autotune_configs = _common.tile_autotune_configs
FP8_DTYPES = (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))


def _operand_reason(x, w) -> str | None:
  for name, a in (("x", x), ("w", w)):
    if jnp.dtype(a.dtype) not in FP8_DTYPES:
      return f"{name}.dtype={a.dtype}; the fp8 kernel needs float8_e4m3fn or float8_e5m2."
  if x.dtype != w.dtype:
    return (f"x.dtype={x.dtype} and w.dtype={w.dtype} differ; Triton's fp8 dot needs one fp8 format for both "
            "(cast one side, e.g. both float8_e4m3fn).")
  cc = _common.target_compute_capability()
  if cc is not None and cc < 89 and jnp.dtype(x.dtype) == jnp.float8_e4m3fn:
    return (f"float8_e4m3fn needs compute capability >= 8.9 (Ada/Hopper) in Triton; the target is sm{cc}. "
            "Use float8_e5m2 or the XLA path.")
  return None


def supports(x, w, x_scale=None, w_scale=None, *, out_dtype=None, config: Config | None = None) -> str | None:
  """Why the kernel cannot run these inputs, or None."""
  del x_scale, w_scale
  return _scaled.supports(_operand_reason(x, w), x, w, out_dtype=out_dtype, config=config)


def fp8_matmul(x: jax.Array, w: jax.Array, x_scale: jax.Array, w_scale: jax.Array, *,
               out_dtype: jnp.dtype = jnp.bfloat16, config: Config | None = None, autotune: bool = False,
               interpret: bool = False) -> jax.Array:
  """``(x @ w.T) * x_scale * w_scale`` for fp8 operands with float32 accumulation (layout in ``reference.py``).

  x (M, K) and w (N, K), K-contiguous, are both float8_e4m3fn or both float8_e5m2 (e4m3 needs sm89+); x_scale is
  float (M, 1) per row or (1, 1), w_scale float (1, N) per channel or (1, 1). ``out_dtype``, ``config``,
  ``autotune``, ``interpret``, the (M, N) result and the errors are those of ``int8_matmul`` (the same kernel).
  """
  return _scaled.matmul("fp8_matmul", supports, x, w, x_scale, w_scale, out_dtype=out_dtype, config=config,
                        autotune=autotune, interpret=interpret)
