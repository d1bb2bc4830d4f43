"""W8A8 matmul entry points: ``supports()`` and the int8 operand rules; the kernel is ``_scaled_matmul``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels import _scaled_matmul as _scaled

Config = _common.TileConfig
default_config = _common.default_tile_config
autotune_configs = _common.tile_autotune_configs
_FLOAT_X = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def _operand_reason(x, w, x_scale) -> str | None:
  if w.dtype != jnp.int8:
    return f"w.dtype={w.dtype}; the int8 kernel needs int8 weights."
  if x_scale is None:
    if jnp.dtype(x.dtype) not in _FLOAT_X:
      return f"x.dtype={x.dtype}; dynamic quantization needs bfloat16, float16 or float32 activations."
  elif x.dtype != jnp.int8:
    return f"x.dtype={x.dtype}; need int8 activations (or pass x_scale=None for fused dynamic quantization)."
  return None


def supports(x, w, x_scale=None, w_scale=None, *, out_dtype=None, config: Config | None = None) -> str | None:
  """Why the kernel cannot run these inputs, or None. ``x_scale=None`` means the fused dynamic-quant variant."""
  del w_scale
  return _scaled.supports(_operand_reason(x, w, x_scale), x, w, out_dtype=out_dtype, config=config)


def int8_matmul(x: jax.Array, w: jax.Array, x_scale: jax.Array, w_scale: jax.Array, *,
                out_dtype: jnp.dtype = jnp.bfloat16, config: Config | None = None, autotune: bool = False,
                interpret: bool = False) -> jax.Array:
  """``(x @ w.T) * x_scale * w_scale`` with int32 accumulation (see ``reference.py`` for the layout).

  Args:
    x: int8 (M, K) activations.
    w: int8 (N, K) weights, K-contiguous.
    x_scale: float (M, 1) per-token or (1, 1) per-tensor activation scale.
    w_scale: float (1, N) per-channel or (1, 1) per-tensor weight scale.
    out_dtype: bfloat16, float16 or float32.
    config: tiling; ``default_config(M, N)`` when None.
    autotune: on a GPU, time ``autotune_configs()`` once per problem (eagerly, on concrete inputs); under
      jit the winner of an earlier eager call is reused.
    interpret: run the Pallas interpreter (CPU testing).

  Returns:
    (M, N) ``out_dtype``.

  Raises:
    ValueError: inconsistent shapes.
    NotImplementedError: valid inputs the kernel cannot run (the ``supports()`` reason).
  """
  return _scaled.matmul("int8_matmul", supports, x, w, x_scale, w_scale, out_dtype=out_dtype, config=config,
                        autotune=autotune, interpret=interpret)


def int8_matmul_dynamic(x: jax.Array, w: jax.Array, w_scale: jax.Array, *, out_dtype: jnp.dtype | None = None,
                        config: Config | None = None, autotune: bool = False, interpret: bool = False) -> jax.Array:
  """Fused per-token dynamic int8 quantization of float x, then ``int8_matmul``.

  Matches ``reference_dynamic``: ``scale = absmax(row) / 127``, ``q = clip(round_half_even(x / scale), -128, 127)``.

  Args:
    x: (M, K) bfloat16, float16 or float32.
    w: int8 (N, K).
    w_scale: float (1, N) or (1, 1).
    out_dtype: defaults to ``x.dtype``.
    config, autotune, interpret: as in ``int8_matmul``.

  Returns:
    (M, N) ``out_dtype``.
  """
  return _scaled.matmul("int8_matmul_dynamic", supports, x, w, None, w_scale, out_dtype=out_dtype or x.dtype,
                        config=config, autotune=autotune, interpret=interpret)
