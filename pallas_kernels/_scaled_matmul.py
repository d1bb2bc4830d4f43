"""The 8-bit scaled matmul shared by ``int8_matmul`` and ``fp8_matmul``: one Triton body, one wrapper, one check.

``out = (x @ w.T) * x_scale * w_scale`` for x (M, K), w (N, K) K-contiguous, both int8 or both fp8; x_scale (M, 1)
per row or (1, 1); w_scale (1, N) per channel or (1, 1). The operand type fixes the accumulator (int8 -> exact
int32, fp8 -> float32); the float32 scale epilogue, tiling, padding, input checks and dispatch are the same.

Inputs reach the body block-aligned in N and K (M is not padded: the last row block masks its loads and stores):
x (M, Kp), w (Np, Kp), x_scale (M, 1) float32 (unused with ``fuse_quant``), w_scale (1, Np) float32; grid
(cdiv(M, bm), Np / bn). The int8 dot lowers to ``wgmma s8`` (sm90) / ``mma.sync s8`` (sm80). The fp8 values feed
``tt.dot`` untouched (the lowering has no pointwise ops on 8-bit floats); on sm90 Triton emits e4m3 -> f16 converts
plus an f16 MMA rather than an fp8 wgmma (KERNELS.md), so fp8 saves memory traffic, not MMA time. With
``fuse_quant`` (int8 only) each program first sweeps its rows of float x for the per-token absmax, then quantizes
each K tile in registers before the MMA (x is read twice, w once).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import _common

_DOT_NT = (((1,), (1,)), ((), ()))
INT8_QMAX = 127.0
INT8_QMIN = -128.0
OUT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def accumulator_dtype(w_dtype) -> jnp.dtype:
  """int32 for int8 weights (exact), float32 for fp8 weights."""
  return jnp.dtype(jnp.int32 if jnp.dtype(w_dtype) == jnp.int8 else jnp.float32)


def reference(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
) -> jax.Array:
  """The jnp specification: ``(x @ w.T) * x_scale * w_scale``, accumulated in ``accumulator_dtype(w.dtype)``.

  int8 operands are multiplied exactly in int32; fp8 operands are upcast to float32 and multiplied at HIGHEST
  precision. The scales are applied in float32 and the result rounded once to ``out_dtype``.
  """
  acc_dtype = accumulator_dtype(w.dtype)
  if acc_dtype == jnp.int32:
    acc = jax.lax.dot_general(x, w, _DOT_NT, preferred_element_type=jnp.int32)
  else:
    acc = jax.lax.dot_general(x.astype(jnp.float32), w.astype(jnp.float32), _DOT_NT,
                              precision=jax.lax.Precision.HIGHEST)
  out = acc.astype(jnp.float32) * x_scale.astype(jnp.float32) * w_scale.astype(jnp.float32)
  return out.astype(out_dtype)


def round_half_even(v: jax.Array) -> jax.Array:
  """Round-half-to-even from floor (the Triton lowering has no ``round``); exact for float32 |v| < 2**23."""
  f = jnp.floor(v)
  d = v - f
  odd = (f - 2.0 * jnp.floor(f * 0.5)) != 0.0
  up = (d > 0.5) | ((d == 0.5) & odd)
  return f + up.astype(v.dtype)


def _load_rows(ref, row_ok, other):
  """``ref[...]`` with rows past M (``row_ok`` False) replaced by ``other`` (M is not padded).

  ``other=None`` leaves masked rows undefined: fine for fp8 x, because output row i depends only on x row i and
  rows past M are never stored (and Triton cannot materialise an fp8 fill value).
  """
  return ref[...] if row_ok is None else pltriton.load(ref, mask=row_ok, other=other)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, *, block_k, n_steps, m, fuse_quant):
  block_m, block_n = x_ref.shape[0], w_ref.shape[0]
  acc_dtype = accumulator_dtype(w_ref.dtype)
  x_fill = 0 if acc_dtype == jnp.int32 else None
  row_ok = None
  if m % block_m:
    row_ok = pl.program_id(0) * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0) < m
  if fuse_quant:
    def amax_body(t, m):
      x = _load_rows(x_ref.at[:, pl.ds(pl.multiple_of(t * block_k, block_k), block_k)], row_ok, 0).astype(jnp.float32)
      return jnp.maximum(m, jnp.max(jnp.abs(x), axis=1))

    amax = jax.lax.fori_loop(0, n_steps, amax_body, jnp.zeros((block_m,), jnp.float32))
    xs = jnp.where(amax > 0, amax / INT8_QMAX, 1.0).reshape(block_m, 1)
  else:
    xs = _load_rows(xs_ref, row_ok, 1.0)

  def body(t, acc):
    k0 = pl.multiple_of(t * block_k, block_k)
    x = _load_rows(x_ref.at[:, pl.ds(k0, block_k)], row_ok, x_fill)
    if fuse_quant:
      x = jnp.clip(round_half_even(x.astype(jnp.float32) / xs), INT8_QMIN, INT8_QMAX).astype(jnp.int8)
    w = w_ref[:, pl.ds(k0, block_k)]
    return acc + jax.lax.dot_general(x, w, _DOT_NT, preferred_element_type=acc_dtype)

  acc = jax.lax.fori_loop(0, n_steps, body, jnp.zeros((block_m, block_n), acc_dtype))
  out = (acc.astype(jnp.float32) * xs * ws_ref[...]).astype(o_ref.dtype)
  if row_ok is None:
    o_ref[...] = out
  else:
    pltriton.store(o_ref, out, mask=row_ok)


@functools.partial(jax.jit, static_argnames=("name", "out_dtype", "config", "interpret"))
def _run(x, w, x_scale, w_scale, *, name, out_dtype, config, interpret):
  """Pads N and K to the tiles, broadcasts the scales to (M, 1) / (1, Np) float32, runs the kernel, unpads N."""
  m, k = x.shape
  n = w.shape[0]
  fuse = x_scale is None
  np_ = _common.round_up(n, config.block_n)
  kp = _common.round_up(k, config.block_k)
  x = _common.pad_axis(x, 1, kp)
  w = _common.pad_axis(_common.pad_axis(w, 0, np_), 1, kp)
  xs = jnp.ones((m, 1), jnp.float32) if fuse else jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))
  ws = _common.pad_axis(jnp.broadcast_to(w_scale.astype(jnp.float32), (1, n)), 1, np_, 1.0)
  bm, bn = config.block_m, config.block_n
  out = pl.pallas_call(
      functools.partial(_kernel, block_k=config.block_k, n_steps=kp // config.block_k, m=m, fuse_quant=fuse),
      out_shape=jax.ShapeDtypeStruct((m, np_), out_dtype),
      grid=(_common.cdiv(m, bm), np_ // bn),
      in_specs=[
          pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
          pl.BlockSpec((bn, kp), lambda i, j: (j, 0)),
          pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
          pl.BlockSpec((1, bn), lambda i, j: (0, j)),
      ],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      compiler_params=_common.triton_compiler_params(config.num_warps, config.num_stages),
      interpret=interpret,
      name=name,
  )(x, w, xs, ws)
  return out if n == np_ else out[:, :n]


def check_inputs(name: str, x, w, x_scale, w_scale) -> None:
  """Raises ValueError for inconsistent shapes (bad input, not a backend limitation). ``x_scale`` may be None."""
  if x.ndim != 2 or w.ndim != 2:
    raise ValueError(f"{name}: x (M, K) and w (N, K) must be 2-D; got x{x.shape}, w{w.shape}.")
  if x.shape[1] != w.shape[1]:
    raise ValueError(f"{name}: x{x.shape} and w{w.shape} disagree on K (w is (N, K), K-contiguous).")
  m, n = x.shape[0], w.shape[0]
  if x_scale is not None and x_scale.shape not in ((m, 1), (1, 1)):
    raise ValueError(f"{name}: x_scale shape {x_scale.shape}; expected per-row ({m}, 1) or per-tensor (1, 1).")
  if w_scale.shape not in ((1, n), (1, 1)):
    raise ValueError(f"{name}: w_scale shape {w_scale.shape}; expected per-channel (1, {n}) or per-tensor (1, 1).")


def supports(operand_reason: str | None, x, w, *, out_dtype, config) -> str | None:
  """The first reason the kernel cannot run: the operand-type reason, then out_dtype, then shared memory."""
  if operand_reason is not None:
    return operand_reason
  if out_dtype is not None and jnp.dtype(out_dtype) not in OUT_DTYPES:
    return f"out_dtype={out_dtype}; need bfloat16, float16 or float32."
  cfg = config or _common.default_tile_config(x.shape[0], w.shape[0], x_itemsize=x.dtype.itemsize)
  return _common.tile_smem_reason(cfg, x.dtype.itemsize, 1)


def matmul(name, supports_fn, x, w, x_scale, w_scale, *, out_dtype, config, autotune, interpret) -> jax.Array:
  """Checks, picks the tiles (default, autotuned or given), refuses with ``supports_fn``'s reason, runs.

  ``supports_fn(x, w, x_scale, w_scale, out_dtype=, config=)`` is the calling package's public ``supports``;
  ``x_scale=None`` selects fused dynamic int8 quantization of float x.
  """
  check_inputs(name, x, w, x_scale, w_scale)
  run = functools.partial(_run, name=name, out_dtype=jnp.dtype(out_dtype))
  default = _common.default_tile_config(x.shape[0], w.shape[0], x_itemsize=x.dtype.itemsize)
  return _common.dispatch(
      name, run, (x, w, x_scale, w_scale), n=w.shape[0], out_dtype=out_dtype, config=config, default=default,
      tune=autotune, interpret=interpret, candidates=_common.tile_autotune_configs(),
      key=(name, x.shape, str(x.dtype), str(w.dtype), w.shape[0], str(out_dtype)),
      supports=lambda c: supports_fn(x, w, x_scale, w_scale, out_dtype=out_dtype, config=c))
