"""Triton-lowered Pallas body and ``pallas_call`` for the W8A8 matmul (the only backend-specific file).

Inputs arrive block-aligned in N and K from ``ops.py`` (M is not padded: the last row block masks its loads and
stores): x (M, Kp) int8 (or bf16/fp16/f32 with ``fuse_quant``),
w (Np, Kp) int8, x_scale (M, 1) float32 (unused with ``fuse_quant``), w_scale (1, Np) float32. Grid
(cdiv(M, bm), Np / bn). The int8 x int8 -> int32 dot lowers to ``wgmma s8`` (sm90) / ``mma.sync s8`` (sm80); the
epilogue applies both scales in float32. With ``fuse_quant`` each program first sweeps its rows of x for the
per-token absmax, then quantizes each K tile in registers before the MMA (x is read twice, w once).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import _common

_DOT_NT = (((1,), (1,)), ((), ()))


def round_half_even(v: jax.Array) -> jax.Array:
  """Round-half-to-even from floor (the Triton lowering has no ``round``); exact for float32 |v| < 2**23."""
  f = jnp.floor(v)
  d = v - f
  odd = (f - 2.0 * jnp.floor(f * 0.5)) != 0.0
  up = (d > 0.5) | ((d == 0.5) & odd)
  return f + up.astype(v.dtype)


def _load_rows(ref, row_ok, other):
  """``ref[...]`` with rows past M (``row_ok`` False) replaced by ``other`` (M is not padded)."""
  return ref[...] if row_ok is None else pltriton.load(ref, mask=row_ok, other=other)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, *, block_k, n_steps, m, fuse_quant):
  block_m, block_n = x_ref.shape[0], w_ref.shape[0]
  row_ok = None
  if m % block_m:
    row_ok = pl.program_id(0) * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0) < m
  if fuse_quant:
    def amax_body(t, m):
      x = _load_rows(x_ref.at[:, pl.ds(pl.multiple_of(t * block_k, block_k), block_k)], row_ok, 0).astype(jnp.float32)
      return jnp.maximum(m, jnp.max(jnp.abs(x), axis=1))

    amax = jax.lax.fori_loop(0, n_steps, amax_body, jnp.zeros((block_m,), jnp.float32))
    xs = jnp.where(amax > 0, amax / 127.0, 1.0).reshape(block_m, 1)
  else:
    xs = _load_rows(xs_ref, row_ok, 1.0)

  def body(t, acc):
    k0 = pl.multiple_of(t * block_k, block_k)
    x = _load_rows(x_ref.at[:, pl.ds(k0, block_k)], row_ok, 0)
    if fuse_quant:
      x = jnp.clip(round_half_even(x.astype(jnp.float32) / xs), -128.0, 127.0).astype(jnp.int8)
    w = w_ref[:, pl.ds(k0, block_k)]
    return acc + jax.lax.dot_general(x, w, _DOT_NT, preferred_element_type=jnp.int32)

  acc = jax.lax.fori_loop(0, n_steps, body, jnp.zeros((block_m, block_n), jnp.int32))
  out = (acc.astype(jnp.float32) * xs * ws_ref[...]).astype(o_ref.dtype)
  if row_ok is None:
    o_ref[...] = out
  else:
    pltriton.store(o_ref, out, mask=row_ok)


def int8_matmul_triton(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype: jnp.dtype,
    fuse_quant: bool,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
    num_stages: int,
    interpret: bool,
) -> jax.Array:
  """Runs the kernel on aligned inputs; returns (Mp, Np) ``out_dtype``."""
  mp, kp = x.shape
  np_ = w.shape[0]
  kernel = functools.partial(_kernel, block_k=block_k, n_steps=kp // block_k, fuse_quant=fuse_quant, m=mp)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(_common.cdiv(mp, block_m), np_ // block_n),
      in_specs=[
          pl.BlockSpec((block_m, kp), lambda i, j: (i, 0)),
          pl.BlockSpec((block_n, kp), lambda i, j: (j, 0)),
          pl.BlockSpec((block_m, 1), lambda i, j: (i, 0)),
          pl.BlockSpec((1, block_n), lambda i, j: (0, j)),
      ],
      out_specs=pl.BlockSpec((block_m, block_n), lambda i, j: (i, j)),
      compiler_params=_common.triton_compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="int8_matmul_dynamic" if fuse_quant else "int8_matmul",
  )(x, w, x_scale, w_scale)
