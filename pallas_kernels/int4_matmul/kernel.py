"""Triton-lowered Pallas body and ``pallas_call`` for the W4A16 matmul (the only backend-specific file).

Inputs arrive block-aligned in N and K from ``ops.py``: x (M, Kp), w_packed uint8 (Np, Kp // 2), scales float
(Kg, Np) in their stored dtype, zeros integer (Kg, Np) or None, g_idx int32 (Kp,) or None. M is not padded: when it
is not a multiple of ``block_m`` the x loads and output stores are masked by row, so a decode step (M = 1) neither
copies x nor writes (or, with split-K, re-reads) 16x more output rows than it needs. Grid:
(cdiv(M, bm), Np / bn, split_k); each program loops over its share of K in steps of ``block_k`` (an ``scf.for``
that Triton software-pipelines with ``num_stages``).

Two dequantization modes, chosen statically:
* group-uniform (no g_idx and ``group_size % block_k == 0``): every K step lies in one scale group, so the integer
  weights ``q - zero`` (exact in bf16/fp16) feed the MMA directly and the scale multiplies the float32 partial
  product afterwards. With ``fast_convert`` the int4 -> bf16/fp16 conversion is done with bit tricks
  (``bits(MAGIC | v) == BIAS + v``) instead of integer-to-float instructions.
* per-element (act-order g_idx, or groups smaller than ``block_k``): a (block_k, block_n) tile of scales (and zeros)
  is gathered by scale row and the weight is dequantized in float32 before the MMA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import _common

# bits(MAGIC | v) == BIAS + v for 0 <= v < 16 (exact: the exponent fixes an ulp of 1).
_MAGIC = {jnp.dtype(jnp.bfloat16): (0x4300, 128.0), jnp.dtype(jnp.float16): (0x6400, 1024.0)}


def _unpack_nibbles(packed: jax.Array, block_n: int, block_k: int) -> jax.Array:
  """uint8 (bn, bk // 2) -> int32 (bn, bk) unsigned nibbles, low nibble first along k."""
  b = packed.astype(jnp.int32)
  lo = b & 0xF
  hi = (b >> 4) & 0xF
  return jnp.stack([lo, hi], axis=-1).reshape(block_n, block_k)


_DOT_NT = (((1,), (1,)), ((), ()))


def _kernel(*refs, has_zeros, has_g_idx, uniform, signed, fast_convert, group_size, block_k, k_per_split,
            split_k, m):
  x_ref, w_ref, s_ref = refs[:3]
  rest = list(refs[3:])
  z_ref = rest.pop(0) if has_zeros else None
  g_ref = rest.pop(0) if has_g_idx else None
  (o_ref,) = rest
  block_m, block_n = x_ref.shape[0], w_ref.shape[0]
  dtype = x_ref.dtype
  k_start = pl.program_id(2) * k_per_split if split_k > 1 else 0
  offset = 8.0 if signed else 0.0  # signed nibbles are biased by 8 via v = u ^ 8
  row_ok = None
  if m % block_m:
    rows = pl.program_id(0) * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0)
    row_ok = rows < m

  def body(t, acc):
    k0 = pl.multiple_of(k_start + t * block_k, block_k)
    if row_ok is None:
      x = x_ref[:, pl.ds(k0, block_k)]
    else:
      x = pltriton.load(x_ref.at[:, pl.ds(k0, block_k)], mask=row_ok, other=0.0)
    u = _unpack_nibbles(w_ref[:, pl.ds(k0 // 2, block_k // 2)], block_n, block_k)
    v = u ^ 8 if signed else u
    if uniform:
      # Weight stays (bn, bk) (the stored order); the MMA reads it transposed, and the scale row multiplies the
      # float32 partial product of this K step.
      row = k0 // group_size
      s = s_ref[pl.ds(row, 1), :].astype(jnp.float32)
      z = None
      if has_zeros:
        z = z_ref[pl.ds(row, 1), :].astype(jnp.int32).astype(jnp.float32).reshape(block_n, 1)
      if fast_convert:
        magic, bias = _MAGIC[jnp.dtype(dtype)]
        wv = jax.lax.bitcast_convert_type((v | magic).astype(jnp.int16), dtype)
        w = wv - (bias + offset) if z is None else wv - (z + (bias + offset)).astype(dtype)
      else:
        vf = v.astype(jnp.float32) - offset
        w = (vf if z is None else vf - z).astype(dtype)
      return acc + jax.lax.dot_general(x, w.astype(dtype), _DOT_NT, preferred_element_type=jnp.float32) * s
    if has_g_idx:
      rows = g_ref[pl.ds(k0, block_k)]
    else:
      rows = (k0 + jax.lax.broadcasted_iota(jnp.int32, (block_k,), 0)) // group_size
    s = s_ref[rows, :].astype(jnp.float32)
    vf = v.T.astype(jnp.float32) - offset
    if has_zeros:
      vf = vf - z_ref[rows, :].astype(jnp.int32).astype(jnp.float32)
    w = (vf * s).astype(dtype)
    return acc + jnp.dot(x, w, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, k_per_split // block_k, body, jnp.zeros((block_m, block_n), jnp.float32))
  if row_ok is None:
    o_ref[...] = acc.astype(o_ref.dtype)
  else:
    pltriton.store(o_ref, acc.astype(o_ref.dtype), mask=row_ok)


def int4_matmul_triton(
    x: jax.Array,
    w_packed: jax.Array,
    scales: jax.Array,
    zeros: jax.Array | None,
    g_idx: jax.Array | None,
    *,
    group_size: int,
    signed: bool,
    block_m: int,
    block_n: int,
    block_k: int,
    split_k: int,
    num_warps: int,
    num_stages: int,
    fast_convert: bool,
    interpret: bool,
) -> jax.Array:
  """Runs the kernel on N/K-aligned inputs; returns (M, Np) in x.dtype, or float32 (split_k, M, Np) partials."""
  mp, kp = x.shape
  np_ = w_packed.shape[0]
  kg = scales.shape[0]
  uniform = g_idx is None and group_size % block_k == 0
  kernel = functools.partial(
      _kernel, has_zeros=zeros is not None, has_g_idx=g_idx is not None, uniform=uniform, signed=signed,
      fast_convert=fast_convert and uniform, group_size=group_size, block_k=block_k,
      k_per_split=kp // split_k, split_k=split_k, m=mp)
  in_specs = [
      pl.BlockSpec((block_m, kp), lambda i, j, s: (i, 0)),
      pl.BlockSpec((block_n, kp // 2), lambda i, j, s: (j, 0)),
      pl.BlockSpec((kg, block_n), lambda i, j, s: (0, j)),
  ]
  args = [x, w_packed, scales]
  if zeros is not None:
    in_specs.append(pl.BlockSpec((kg, block_n), lambda i, j, s: (0, j)))
    args.append(zeros)
  if g_idx is not None:
    in_specs.append(pl.BlockSpec((kp,), lambda i, j, s: (0,)))
    args.append(g_idx)
  if split_k == 1:
    out_shape = jax.ShapeDtypeStruct((mp, np_), x.dtype)
    out_spec = pl.BlockSpec((block_m, block_n), lambda i, j, s: (i, j))
  else:
    out_shape = jax.ShapeDtypeStruct((split_k, mp, np_), jnp.float32)
    out_spec = pl.BlockSpec((pl.Squeezed(), block_m, block_n), lambda i, j, s: (s, i, j))
  return pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=(_common.cdiv(mp, block_m), np_ // block_n, split_k),
      in_specs=in_specs,
      out_specs=out_spec,
      compiler_params=_common.triton_compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="int4_matmul",
  )(*args)
