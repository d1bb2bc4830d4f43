"""Sub-byte packing for kernel-facing layouts.

Layout (little-endian within a byte): along ``axis``, element ``2i`` goes to the LOW nibble (bits 0-3) and element
``2i+1`` to the HIGH nibble (bits 4-7) of byte ``i``. For 2-bit values, element ``4i + j`` occupies bits
``2j .. 2j+1``. Signed values are stored in two's complement. ``unpack(pack(v)) == v`` exactly.
The length along ``axis`` must be a multiple of the values per byte; pad first (e.g. with `pad_to_multiple`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_SUPPORTED_BITS = (2, 4)


def _check(bits: int, n: int, axis: int, shape) -> int:
  if bits not in _SUPPORTED_BITS:
    raise ValueError(f"pack/unpack: bits={bits} is not supported; use 4 (two per byte) or 2 (four per byte). "
                     "int3/int8 values are stored unpacked.")
  per = 8 // bits
  if n % per:
    raise ValueError(f"pack: axis {axis} of shape {tuple(shape)} has length {n}, not a multiple of {per} "
                     f"({bits}-bit values per byte); pad it first with jquant.core.packing.pad_to_multiple.")
  return per


def pack(values: jax.Array, bits: int = 4, axis: int = -1) -> jax.Array:
  """Packs integer values (signed or unsigned, each fitting ``bits``) into uint8 along ``axis``."""
  if not jnp.issubdtype(values.dtype, jnp.integer):
    raise TypeError(f"pack: expected integer values (e.g. int4/uint4/int8), got {values.dtype}.")
  axis = axis % values.ndim
  per = _check(bits, values.shape[axis], axis, values.shape)
  v = jnp.moveaxis(values.astype(jnp.int32), axis, -1)
  v = (v & ((1 << bits) - 1)).reshape(v.shape[:-1] + (v.shape[-1] // per, per))
  shifts = jnp.arange(per, dtype=jnp.int32) * bits
  packed = jnp.sum(v << shifts, axis=-1).astype(jnp.uint8)
  return jnp.moveaxis(packed, -1, axis)


def unpack(packed: jax.Array, bits: int = 4, axis: int = -1, signed: bool = True, dtype=None) -> jax.Array:
  """Inverse of `pack`. Returns int8 (or ``dtype``) values, sign-extended when ``signed``."""
  if packed.dtype != jnp.uint8:
    raise TypeError(f"unpack: expected uint8 packed bytes, got {packed.dtype}.")
  if bits not in _SUPPORTED_BITS:
    raise ValueError(f"unpack: bits={bits} is not supported; use 4 or 2.")
  axis = axis % packed.ndim
  per = 8 // bits
  p = jnp.moveaxis(packed.astype(jnp.int32), axis, -1)
  shifts = jnp.arange(per, dtype=jnp.int32) * bits
  v = (p[..., None] >> shifts) & ((1 << bits) - 1)
  if signed:
    v = jnp.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
  v = v.reshape(p.shape[:-1] + (p.shape[-1] * per,))
  return jnp.moveaxis(v, -1, axis).astype(dtype or jnp.int8)


def pad_to_multiple(values: jax.Array, multiple: int, axis: int = -1) -> jax.Array:
  """Zero-pads ``values`` along ``axis`` up to a multiple of ``multiple`` (keep the original length to unpad)."""
  axis = axis % values.ndim
  pad = (-values.shape[axis]) % multiple
  widths = [(0, 0)] * values.ndim
  widths[axis] = (0, pad)
  return jnp.pad(values, widths)
