"""NumPy float64 reference of the microscaling formats (the test oracle for jquant/core/mx.py).

Written from the rules (OCP MX v1.0 section 6.3; NVIDIA NVFP4 as TransformerEngine computes it), independently of
ml_dtypes/XLA conversions: element rounding is explicit round-half-even on the format's quantum. The NVFP4 scale
arithmetic is float32 by definition (fl(amax/6), fl(../t), fl(1/fl(s*t)), fl(v*enc)), mirrored with np.float32.
"""

import numpy as np

from tests.core.reference import expand, tiles

# (exponent bits, mantissa bits, bias, largest finite value) of each element / scale format
FORMATS = {"float8_e4m3fn": (4, 3, 7, 448.0), "float8_e5m2": (5, 2, 15, 57344.0), "float4_e2m1fn": (2, 1, 1, 6.0)}
EMAX = {"float8_e4m3fn": 8, "float8_e5m2": 15, "float4_e2m1fn": 2}


def round_to_format(v, fmt: str):
  """Round half to even onto ``fmt``'s grid (normals and subnormals), saturating at +-max; float64 out with the
  sign kept on zeros. NaN stays NaN."""
  v = np.asarray(v, np.float64)
  _, mbits, bias, fmax = FORMATS[fmt]
  a = np.abs(v)
  with np.errstate(divide="ignore", invalid="ignore"):
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
  e = np.maximum(e, 1 - bias)                     # subnormals share the smallest normal exponent's quantum
  quantum = np.exp2(e - mbits)
  with np.errstate(invalid="ignore"):
    r = np.round(a / quantum) * quantum            # np.round: half to even; a / quantum is exact (power of two)
  r = np.minimum(r, fmax)
  return np.where(np.isnan(v), np.nan, np.copysign(r, v))


def mx_encode(x, fmt: str, axis: int = 0, block: int = 32):
  """(element values float64 in x's shape, scales float64 (NaN for a non-finite block)) for OCP MX."""
  x = np.asarray(x, np.float64)
  bshape = tuple(block if i == axis % x.ndim else 1 for i in range(x.ndim))
  t = tiles(x, bshape)
  amax = np.abs(t).max(-1)
  finite = np.isfinite(amax)
  with np.errstate(divide="ignore"):
    _, ex = np.frexp(np.where(finite & (amax > 0), amax, 0.0))
  e = np.where(finite & (amax > 0), ex - 1, -127) - EMAX[fmt]
  e = np.clip(e, -127, 127)
  scale = np.where(finite, np.exp2(e.astype(np.float64)), np.nan)
  with np.errstate(invalid="ignore"):
    p = round_to_format(x / expand(np.where(finite, scale, 1.0), x.shape), fmt)
  p = np.where(expand(finite, x.shape), p, 0.0)
  return p, scale


def nvfp4_encode(x, axis: int = 0, block: int = 16):
  """(element values, block scales float64, tensor scale float64) for NVFP4 (one tensor scale, no batch axes)."""
  x32 = np.asarray(x, np.float32)
  bshape = tuple(block if i == axis % x32.ndim else 1 for i in range(x32.ndim))
  amax = tiles(np.abs(x32.astype(np.float64)), bshape).max(-1).astype(np.float32)   # exact: a max of float32s
  tmax = np.float32(np.abs(x32).max())
  if not np.isfinite(tmax):
    nan = np.full(amax.shape, np.nan)
    return np.zeros(x32.shape), nan, np.float64(np.nan)
  t = np.float32(1.0) if tmax == 0 else max(np.float32(tmax / np.float32(2688.0)), np.finfo(np.float32).tiny)
  t = np.float32(t)
  s = round_to_format((amax / np.float32(6.0)) / t, "float8_e4m3fn")        # float32 steps, then RNE to E4M3
  s32 = s.astype(np.float32)
  with np.errstate(divide="ignore"):
    enc = np.where(s32 > 0, np.float32(1.0) / np.where(s32 > 0, s32 * t, 1), 0).astype(np.float32)
  v = (x32 * expand(enc, x32.shape)).astype(np.float32)
  return round_to_format(v, "float4_e2m1fn"), s, np.float64(t)


def mx_decode(p, scale, shape):
  return (p * expand(scale, shape)).astype(np.float32)


def nvfp4_decode(p, s, t, shape):
  return ((p * expand(s, shape)).astype(np.float32) * np.float32(t)).astype(np.float32)
