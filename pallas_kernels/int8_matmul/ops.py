"""W8A8 matmul entry points: ``supports()``, ``default_config()``, and the padded wrappers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.int8_matmul import kernel as _kernel

Config = _common.TileConfig
default_config = _common.default_tile_config
autotune_configs = _common.tile_autotune_configs
_FLOAT_X = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
_OUT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def _check_inputs(name, x, w, x_scale, w_scale):
  if x.ndim != 2 or w.ndim != 2:
    raise ValueError(f"{name}: x (M, K) and w (N, K) must be 2-D; got x{x.shape}, w{w.shape}.")
  if x.shape[1] != w.shape[1]:
    raise ValueError(f"{name}: x{x.shape} and w{w.shape} disagree on K (w is (N, K), K-contiguous).")
  m, n = x.shape[0], w.shape[0]
  if x_scale is not None and x_scale.shape not in ((m, 1), (1, 1)):
    raise ValueError(f"{name}: x_scale shape {x_scale.shape}; expected per-token ({m}, 1) or per-tensor (1, 1).")
  if w_scale.shape not in ((1, n), (1, 1)):
    raise ValueError(f"{name}: w_scale shape {w_scale.shape}; expected per-channel (1, {n}) or per-tensor (1, 1).")


def supports(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype | None = None,
    config: Config | None = None,
) -> str | None:
  """Why the kernel cannot run these inputs, or None. ``x_scale=None`` means the fused dynamic-quant variant."""
  del w_scale
  if w.dtype != jnp.int8:
    return f"w.dtype={w.dtype}; the int8 kernel needs int8 weights."
  if x_scale is None:
    if jnp.dtype(x.dtype) not in _FLOAT_X:
      return f"x.dtype={x.dtype}; dynamic quantization needs bfloat16, float16 or float32 activations."
  elif x.dtype != jnp.int8:
    return f"x.dtype={x.dtype}; need int8 activations (or pass x_scale=None for fused dynamic quantization)."
  if out_dtype is not None and jnp.dtype(out_dtype) not in _OUT_DTYPES:
    return f"out_dtype={out_dtype}; need bfloat16, float16 or float32."
  cfg = config or default_config(x.shape[0], w.shape[0], x_itemsize=x.dtype.itemsize)
  return _common.tile_smem_reason(cfg, x.dtype.itemsize, 1)


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def _run(x, w, x_scale, w_scale, *, out_dtype, config, interpret):
  m, k = x.shape
  n = w.shape[0]
  fuse = x_scale is None
  np_ = _common.round_up(n, config.block_n)
  kp = _common.round_up(k, config.block_k)
  x = _common.pad_axis(x, 1, kp)
  w = _common.pad_axis(_common.pad_axis(w, 0, np_), 1, kp)
  xs = jnp.ones((m, 1), jnp.float32) if fuse else jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))
  ws = _common.pad_axis(jnp.broadcast_to(w_scale.astype(jnp.float32), (1, n)), 1, np_, 1.0)
  out = _kernel.int8_matmul_triton(
      x, w, xs, ws, out_dtype=out_dtype, fuse_quant=fuse, block_m=config.block_m, block_n=config.block_n,
      block_k=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages, interpret=interpret)
  return out if n == np_ else out[:, :n]


def _dispatch(name, x, w, x_scale, w_scale, out_dtype, config, autotune, interpret):
  _check_inputs(name, x, w, x_scale, w_scale)
  m, n = x.shape[0], w.shape[0]
  if config is None:
    config = default_config(m, n, x_itemsize=x.dtype.itemsize)
    if autotune and not interpret:
      config = _common.autotune(
          (name, x.shape, str(x.dtype), n, str(out_dtype)),
          lambda c: functools.partial(_run, out_dtype=out_dtype, config=c, interpret=False),
          autotune_configs(), (x, w, x_scale, w_scale),
          supports=lambda c: supports(x, w, x_scale, w_scale, out_dtype=out_dtype, config=c), default=config)
  if reason := supports(x, w, x_scale, w_scale, out_dtype=out_dtype, config=config):
    raise NotImplementedError(f"{name}: {reason}")
  if m == 0:
    return jnp.zeros((0, n), out_dtype)
  return _run(x, w, x_scale, w_scale, out_dtype=jnp.dtype(out_dtype), config=config, interpret=interpret)


def int8_matmul(
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
  return _dispatch("int8_matmul", x, w, x_scale, w_scale, out_dtype, config, autotune, interpret)


def int8_matmul_dynamic(
    x: jax.Array,
    w: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype: jnp.dtype | None = None,
    config: Config | None = None,
    autotune: bool = False,
    interpret: bool = False,
) -> jax.Array:
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
  return _dispatch("int8_matmul_dynamic", x, w, None, w_scale, out_dtype or x.dtype, config, autotune, interpret)
