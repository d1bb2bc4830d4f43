"""Triton-lowered Pallas body and ``pallas_call`` for the FP8 matmul (the only backend-specific file).

Inputs arrive block-aligned in N and K from ``ops.py`` (M is not padded: the last row block masks its loads and
stores): x (M, Kp) fp8, w (Np, Kp) fp8, x_scale (M, 1) float32,
w_scale (1, Np) float32. Grid (cdiv(M, bm), Np / bn). The fp8 values feed ``tt.dot`` untouched (the lowering has no
pointwise ops on 8-bit floats); on sm90 Triton emits e4m3 -> f16 converts plus an f16 MMA rather than an fp8 wgmma
(KERNELS.md), so this kernel saves memory traffic, not MMA time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import _common

_DOT_NT = (((1,), (1,)), ((), ()))


def _load_rows(ref, row_ok, other):
  """``ref[...]`` with rows past M (``row_ok`` False) masked off (M is not padded).

  ``other=None`` leaves masked rows undefined: fine for x, because output row i depends only on x row i and rows
  past M are never stored (and Triton cannot materialise an fp8 fill value).
  """
  return ref[...] if row_ok is None else pltriton.load(ref, mask=row_ok, other=other)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, *, block_k, n_steps, m):
  block_m, block_n = x_ref.shape[0], w_ref.shape[0]
  row_ok = None
  if m % block_m:
    row_ok = pl.program_id(0) * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0) < m

  def body(t, acc):
    k0 = pl.multiple_of(t * block_k, block_k)
    x = _load_rows(x_ref.at[:, pl.ds(k0, block_k)], row_ok, None)
    w = w_ref[:, pl.ds(k0, block_k)]
    return acc + jax.lax.dot_general(x, w, _DOT_NT, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, n_steps, body, jnp.zeros((block_m, block_n), jnp.float32))
  out = (acc * _load_rows(xs_ref, row_ok, 1.0) * ws_ref[...]).astype(o_ref.dtype)
  if row_ok is None:
    o_ref[...] = out
  else:
    pltriton.store(o_ref, out, mask=row_ok)


def fp8_matmul_triton(
    x: jax.Array,
    w: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype: jnp.dtype,
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
  return pl.pallas_call(
      functools.partial(_kernel, block_k=block_k, n_steps=kp // block_k, m=mp),
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
      name="fp8_matmul",
  )(x, w, x_scale, w_scale)
