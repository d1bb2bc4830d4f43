"""FP8 matmul entry point: ``supports()``, ``default_config()`` and the padded wrapper."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.fp8_matmul import kernel as _kernel

Config = _common.TileConfig
default_config = _common.default_tile_config
autotune_configs = _common.tile_autotune_configs
FP8_DTYPES = (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))
_OUT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def _check_inputs(x, w, x_scale, w_scale):
  if x.ndim != 2 or w.ndim != 2:
    raise ValueError(f"fp8_matmul: x (M, K) and w (N, K) must be 2-D; got x{x.shape}, w{w.shape}.")
  if x.shape[1] != w.shape[1]:
    raise ValueError(f"fp8_matmul: x{x.shape} and w{w.shape} disagree on K (w is (N, K), K-contiguous).")
  m, n = x.shape[0], w.shape[0]
  if x_scale.shape not in ((m, 1), (1, 1)):
    raise ValueError(f"fp8_matmul: x_scale shape {x_scale.shape}; expected per-row ({m}, 1) or per-tensor (1, 1).")
  if w_scale.shape not in ((1, n), (1, 1)):
    raise ValueError(f"fp8_matmul: w_scale shape {w_scale.shape}; expected per-channel (1, {n}) or (1, 1).")


def supports(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype | None = None,
    config: Config | None = None,
) -> str | None:
  """Why the kernel cannot run these inputs, or None."""
  del x_scale, w_scale
  for name, a in (("x", x), ("w", w)):
    if jnp.dtype(a.dtype) not in FP8_DTYPES:
      return f"{name}.dtype={a.dtype}; the fp8 kernel needs float8_e4m3fn or float8_e5m2."
  if x.dtype != w.dtype:
    return (f"x.dtype={x.dtype} and w.dtype={w.dtype} differ; Triton's fp8 dot needs one fp8 format for both "
            "(cast one side, e.g. both float8_e4m3fn).")
  cc = _common.target_compute_capability()
  if cc is not None and cc < 89 and jnp.dtype(jnp.float8_e4m3fn) in (jnp.dtype(x.dtype), jnp.dtype(w.dtype)):
    return (f"float8_e4m3fn needs compute capability >= 8.9 (Ada/Hopper) in Triton; the target is sm{cc}. "
            "Use float8_e5m2 or the XLA path.")
  if out_dtype is not None and jnp.dtype(out_dtype) not in _OUT_DTYPES:
    return f"out_dtype={out_dtype}; need bfloat16, float16 or float32."
  cfg = config or default_config(x.shape[0], w.shape[0])
  return _common.tile_smem_reason(cfg, 1, 1)


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def _run(x, w, x_scale, w_scale, *, out_dtype, config, interpret):
  m, k = x.shape
  n = w.shape[0]
  np_ = _common.round_up(n, config.block_n)
  kp = _common.round_up(k, config.block_k)
  x = _common.pad_axis(x, 1, kp)
  w = _common.pad_axis(_common.pad_axis(w, 0, np_), 1, kp)
  xs = jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))
  ws = _common.pad_axis(jnp.broadcast_to(w_scale.astype(jnp.float32), (1, n)), 1, np_, 1.0)
  out = _kernel.fp8_matmul_triton(
      x, w, xs, ws, out_dtype=out_dtype, block_m=config.block_m, block_n=config.block_n, block_k=config.block_k,
      num_warps=config.num_warps, num_stages=config.num_stages, interpret=interpret)
  return out if n == np_ else out[:, :n]


def fp8_matmul(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    config: Config | None = None,
    autotune: bool = False,
    interpret: bool = False,
) -> jax.Array:
  """``(x @ w.T) * x_scale * w_scale`` for fp8 operands with float32 accumulation (layout in ``reference.py``).

  Args:
    x: (M, K) float8_e4m3fn or float8_e5m2.
    w: (N, K) float8_e4m3fn or float8_e5m2, K-contiguous.
    x_scale: float (M, 1) per-row or (1, 1) per-tensor.
    w_scale: float (1, N) per-channel or (1, 1) per-tensor.
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
  _check_inputs(x, w, x_scale, w_scale)
  m, n = x.shape[0], w.shape[0]
  if config is None:
    config = default_config(m, n)
    if autotune and not interpret:
      config = _common.autotune(
          ("fp8", x.shape, str(x.dtype), str(w.dtype), n, str(out_dtype)),
          lambda c: functools.partial(_run, out_dtype=jnp.dtype(out_dtype), config=c, interpret=False),
          autotune_configs(), (x, w, x_scale, w_scale),
          supports=lambda c: supports(x, w, out_dtype=out_dtype, config=c), default=config)
  if reason := supports(x, w, x_scale, w_scale, out_dtype=out_dtype, config=config):
    raise NotImplementedError(f"fp8_matmul: {reason}")
  if m == 0:
    return jnp.zeros((0, n), out_dtype)
  return _run(x, w, x_scale, w_scale, out_dtype=jnp.dtype(out_dtype), config=config, interpret=interpret)
