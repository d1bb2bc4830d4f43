"""NumPy float64 reference implementation of jquant's quantization formulas (the test oracle)."""

import ml_dtypes
import numpy as np

import jquant as jq


def tiles(x, block):
  """(n0*b0, ...) -> (n0, n1, ..., prod(block)) in float64."""
  nd = x.ndim
  inter = []
  for n, b in zip(x.shape, block):
    inter += [n // b, b]
  xi = x.reshape(inter)
  perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
  return np.transpose(xi, perm).reshape(tuple(n // b for n, b in zip(x.shape, block)) + (-1,))


def expand(s, shape):
  """Broadcast a scale of shape (n0, n1, ...) to the value shape by repeating each entry over its tile."""
  out = s
  for ax, n in enumerate(shape):
    out = np.repeat(out, n // s.shape[ax], axis=ax)
  return out


def qparams(x, qt: jq.QType, block, symmetric):
  t = tiles(np.asarray(x, np.float64), block)
  if symmetric:
    amax = np.abs(t).max(-1)
    scale = amax / (1.0 if qt.is_lut else qt.qmax)
    scale = np.where(scale > 0, scale, 1.0)
    return scale, None
  lo = np.minimum(t.min(-1), 0.0)
  hi = np.maximum(t.max(-1), 0.0)
  scale = (hi - lo) / (qt.qmax - qt.qmin)
  scale = np.where(scale > 0, scale, 1.0)
  zp = np.clip(np.round(qt.qmin - lo / scale), qt.qmin, qt.qmax)
  return scale, zp


def quantize(x, qt: jq.QType, block, symmetric):
  """Returns (codes as float64, dequantized float64, scale, zp)."""
  x = np.asarray(x, np.float64)
  scale, zp = qparams(x, qt, block, symmetric)
  s = expand(scale, x.shape)
  if qt.is_int:
    z = 0.0 if zp is None else expand(zp, x.shape)
    q = np.clip(np.round(x / s) + z, qt.qmin, qt.qmax)
    return q, (q - z) * s, scale, zp
  if qt.is_float:
    dt = ml_dtypes.float8_e4m3fn if qt.name == "fp8_e4m3" else ml_dtypes.float8_e5m2
    q = np.clip(x / s, qt.qmin, qt.qmax).astype(dt).astype(np.float64)
    return q, q * s, scale, zp
  levels = np.asarray(qt.levels, np.float64)
  v = x / s
  dist = np.abs(v[..., None] - levels)
  code = np.argmin(dist, axis=-1)          # argmin takes the first (lower) level on ties
  return code.astype(np.float64), levels[code] * s, scale, zp
