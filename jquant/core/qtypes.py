"""Quantized number formats (QTypes): integer grids, float8 formats, the NF4 lookup table and the block-scaled
microscaling formats (MXFP8 / MXFP4 / NVFP4; their numerics live in `core/mx.py`).

A QType is a frozen, hashable description: it can be a `jax.jit` static argument. It knows its storage dtype
(the dtype of ``QArray.qvalue``) and its representable range ``[qmin, qmax]`` in the quantized domain.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

# The 16 NF4 levels (normal-float 4-bit, QLoRA): quantiles of N(0, 1) rescaled to [-1, 1], with an exact 0.
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


@dataclasses.dataclass(frozen=True)
class QType:
  """A quantized number format.

  Attributes:
    name: short name, e.g. ``"int4"``.
    bits: bits per value in packed storage.
    kind: ``"int"`` (uniform integer grid), ``"float"`` (float8) or ``"lut"`` (lookup table, NF4).
    storage: name of the dtype ``QArray.qvalue`` is stored in (logical shape, unpacked).
    qmin: smallest representable quantized value (integer grid value, float8 min, or -1 for NF4).
    qmax: largest representable quantized value.
    levels: the lookup table for ``kind == "lut"`` (codes index into it), else None.
    scale_format: block-scaled (microscaling) formats only: the storage dtype name of their block scales
      (``"float8_e8m0fnu"`` for OCP MX, ``"float8_e4m3fn"`` for NVFP4), else None.
    block_size: elements per block scale of a microscaling format (32 for MX, 16 for NVFP4), else None.
  """

  name: str
  bits: int
  kind: str
  storage: str
  qmin: float
  qmax: float
  levels: tuple[float, ...] | None = None
  scale_format: str | None = None
  block_size: int | None = None

  @property
  def storage_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.storage)

  @property
  def is_float(self) -> bool:
    return self.kind == "float"

  @property
  def is_int(self) -> bool:
    return self.kind == "int"

  @property
  def is_lut(self) -> bool:
    return self.kind == "lut"

  @property
  def is_mx(self) -> bool:
    """A block-scaled microscaling format (MXFP8, MXFP4, NVFP4): scales chosen by the format's own rule."""
    return self.scale_format is not None

  @property
  def signed(self) -> bool:
    return self.qmin < 0

  @property
  def num_levels(self) -> int:
    if self.is_int:
      return int(self.qmax - self.qmin) + 1
    if self.is_lut:
      return len(self.levels)
    return 2 ** self.bits

  def __repr__(self) -> str:
    return f"jq.{self.name.upper()}"


def _int(name: str, bits: int, signed: bool, storage: str) -> QType:
  lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
  return QType(name=name, bits=bits, kind="int", storage=storage, qmin=float(lo), qmax=float(hi))


INT8 = _int("int8", 8, True, "int8")
UINT8 = _int("uint8", 8, False, "uint8")
INT4 = _int("int4", 4, True, "int4")
UINT4 = _int("uint4", 4, False, "uint4")
INT3 = _int("int3", 3, True, "int8")      # no 3-bit dtype: stored in int8, range [-4, 3]
UINT3 = _int("uint3", 3, False, "uint8")  # stored in uint8, range [0, 7]
INT2 = _int("int2", 2, True, "int2")
UINT2 = _int("uint2", 2, False, "uint2")
FP8_E4M3 = QType(name="fp8_e4m3", bits=8, kind="float", storage="float8_e4m3fn",
                 qmin=-float(jnp.finfo(jnp.float8_e4m3fn).max), qmax=float(jnp.finfo(jnp.float8_e4m3fn).max))
FP8_E5M2 = QType(name="fp8_e5m2", bits=8, kind="float", storage="float8_e5m2",
                 qmin=-float(jnp.finfo(jnp.float8_e5m2).max), qmax=float(jnp.finfo(jnp.float8_e5m2).max))
NF4 = QType(name="nf4", bits=4, kind="lut", storage="uint8", qmin=-1.0, qmax=1.0, levels=NF4_LEVELS)


def _mx(name: str, bits: int, storage: str, scale_format: str, block_size: int) -> QType:
  fmax = float(jnp.finfo(jnp.dtype(storage)).max)
  return QType(name=name, bits=bits, kind="float", storage=storage, qmin=-fmax, qmax=fmax,
               scale_format=scale_format, block_size=block_size)


# OCP Microscaling (MX) v1.0: 32 elements share one power-of-two E8M0 scale. NVFP4: 16 E2M1 elements share one
# E4M3 scale, times one float32 scale per tensor.
MXFP8_E4M3 = _mx("mxfp8_e4m3", 8, "float8_e4m3fn", "float8_e8m0fnu", 32)
MXFP8_E5M2 = _mx("mxfp8_e5m2", 8, "float8_e5m2", "float8_e8m0fnu", 32)
MXFP4 = _mx("mxfp4", 4, "float4_e2m1fn", "float8_e8m0fnu", 32)
NVFP4 = _mx("nvfp4", 4, "float4_e2m1fn", "float8_e4m3fn", 16)

ALL_QTYPES: tuple[QType, ...] = (INT8, UINT8, INT4, UINT4, INT3, UINT3, INT2, UINT2, FP8_E4M3, FP8_E5M2, NF4,
                                 MXFP8_E4M3, MXFP8_E5M2, MXFP4, NVFP4)


def qtype_by_name(name: str) -> QType:
  """Looks a QType up by name (``"int4"``, ``"fp8_e4m3"``, ...); used by checkpoint loading and the CLI."""
  for qt in ALL_QTYPES:
    if qt.name == name:
      return qt
  raise ValueError(f"unknown qtype name {name!r}; expected one of {[q.name for q in ALL_QTYPES]}.")
