"""NumPy float64 references for fake quantization (clipped STE) and LSQ gradients."""

import zlib

import ml_dtypes
import numpy as np


def fresh_rng(test_id: str) -> np.random.Generator:
  """Randomness derived from the test id and the suite's seed base (fixed unless JQUANT_TEST_SEED says otherwise)."""
  from tests.conftest import SEED_BASE  # pylint: disable=import-outside-toplevel
  return np.random.default_rng((zlib.crc32(test_id.encode()) + SEED_BASE) % (2**31))


def tiles(x, block):
  nd = x.ndim
  inter = []
  for n, b in zip(x.shape, block):
    inter += [n // b, b]
  perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
  return np.transpose(x.reshape(inter), perm).reshape(tuple(n // b for n, b in zip(x.shape, block)) + (-1,))


def expand(s, shape):
  out = s
  for ax, n in enumerate(shape):
    out = np.repeat(out, n // s.shape[ax], axis=ax)
  return out


def qparams(x, spec):
  qt, block = spec.qtype, spec.granularity.block_shape(x.shape)
  t = tiles(np.asarray(x, np.float64), block)
  if spec.symmetric:
    s = np.abs(t).max(-1) / (1.0 if qt.is_lut else qt.qmax)
    return np.where(s > 0, s, 1.0), None
  lo, hi = np.minimum(t.min(-1), 0.0), np.maximum(t.max(-1), 0.0)
  s = (hi - lo) / (qt.qmax - qt.qmin)
  s = np.where(s > 0, s, 1.0)
  return s, np.clip(np.round(qt.qmin - lo / s), qt.qmin, qt.qmax)


def fake_quant(x, spec, scale=None, zero_point=None):
  """(forward value, in-range mask) in float64."""
  x = np.asarray(x, np.float64)
  if scale is None:
    scale, zero_point = qparams(x, spec)
  qt = spec.qtype
  s = expand(np.asarray(scale, np.float64), x.shape)
  z = 0.0 if zero_point is None else expand(np.asarray(zero_point, np.float64), x.shape)
  v = x / s
  if qt.is_int:
    y = (np.clip(np.round(v) + z, qt.qmin, qt.qmax) - z) * s
  elif qt.is_float:
    y = np.clip(v, qt.qmin, qt.qmax).astype(getattr(ml_dtypes, qt.storage)).astype(np.float64) * s
  else:
    levels = np.asarray(qt.levels, np.float64)
    mids = (levels[1:] + levels[:-1]) / 2
    y = levels[np.sum(v[..., None] > mids, axis=-1)] * s
  lo, hi = (qt.qmin - z) * s, (qt.qmax - z) * s
  slack = 4 * np.finfo(np.float32).eps      # the documented widening that keeps a range's own extremes inside
  mask = (x >= lo - slack * np.abs(lo)) & (x <= hi + slack * np.abs(hi))
  return y, mask


def lsq_grads(x, scale, zero_point, spec, g):
  """float64 (dx, dscale, dzero_point) of sum(g * lsq_fake_quant(x, s, z)) per the LSQ / LSQ+ papers."""
  qt, block = spec.qtype, spec.granularity.block_shape(x.shape)
  n = int(np.prod(block))
  gs = 1.0 / np.sqrt(n * qt.qmax)
  x = np.asarray(x, np.float64)
  s = expand(np.asarray(scale, np.float64), x.shape)
  z = 0.0 if zero_point is None else expand(np.clip(np.round(np.asarray(zero_point, np.float64)), qt.qmin, qt.qmax),
                                            x.shape)
  v = x / s
  lo_q, hi_q = qt.qmin - z, qt.qmax - z          # the grid offsets of the clip bounds
  r = np.round(v)
  below, above = v < lo_q, v > hi_q
  inside = ~below & ~above
  dx = np.where(inside, g, 0.0)
  ds_el = np.where(inside, r - v, np.where(below, lo_q, hi_q))
  dscale = gs * tiles(g * ds_el, block).sum(-1)
  dz = None if zero_point is None else gs * tiles(np.where(inside, 0.0, -g * s), block).sum(-1)
  return dx, dscale, dz
