"""NumPy float64 references for the calibration statistics (the test oracle for jquant.calibration)."""

import numpy as np


def tiles(x, block):
  """(n0*b0, ...) -> (n0, n1, ..., prod(block)), float64."""
  x = np.asarray(x, np.float64)
  inter = []
  for n, b in zip(x.shape, block):
    inter += [n // b, b]
  nd = x.ndim
  perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
  return np.transpose(x.reshape(inter), perm).reshape(tuple(n // b for n, b in zip(x.shape, block)) + (-1,))


def expand(s, shape):
  out = np.asarray(s, np.float64)
  for ax, n in enumerate(shape):
    out = np.repeat(out, n // out.shape[ax], axis=ax)
  return out


def ema(values, decay):
  """r_1 = m_1, r_k = d r_{k-1} + (1 - d) m_k, in float64."""
  r = np.asarray(values[0], np.float64)
  for m in values[1:]:
    r = decay * r + (1.0 - decay) * np.asarray(m, np.float64)
  return r


def int_qparams(lo, hi, qmin, qmax, symmetric):
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  if symmetric:
    s = np.abs(hi) / qmax
    return np.where(s > 0, s, 1.0), None
  lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
  s = (hi - lo) / (qmax - qmin)
  s = np.where(s > 0, s, 1.0)
  return s, np.clip(np.round(qmin - lo / s), qmin, qmax)


def int_fake_quant(t, s, zp, qmin, qmax):
  """Quantize-dequantize of tiles t (*S, T) with params (*S) on an integer grid (round half to even)."""
  s = np.asarray(s, np.float64)[..., None]
  z = 0.0 if zp is None else np.asarray(zp, np.float64)[..., None]
  q = np.clip(np.round(t / s) + z, qmin, qmax)
  return (q - z) * s


def quant_mse(x, block, scale, zp, qmin, qmax):
  """Mean squared quantization error of x with per-tile (scale, zp) given in scale shape."""
  t = tiles(x, block)
  zz = None if zp is None else np.asarray(zp, np.float64).reshape(t.shape[:-1])
  return float(np.mean((int_fake_quant(t, np.asarray(scale, np.float64).reshape(t.shape[:-1]), zz, qmin, qmax)
                        - t) ** 2))


def mse_search(t, qmin, qmax, symmetric, grid, min_ratio):
  """Exact grid search over all values: per-tile best total squared error and the ratio giving it."""
  lo0, hi0 = t.min(-1), t.max(-1)
  amax = np.abs(t).max(-1)
  best_err = np.full(t.shape[:-1], np.inf)
  best_r = np.ones(t.shape[:-1])
  for r in np.linspace(1.0, min_ratio, grid):
    s, z = int_qparams(-amax * r, amax * r, qmin, qmax, True) if symmetric else int_qparams(
        lo0 * r, hi0 * r, qmin, qmax, False)
    err = ((int_fake_quant(t, s, z, qmin, qmax) - t) ** 2).sum(-1)
    better = err < best_err
    best_err = np.where(better, err, best_err)
    best_r = np.where(better, r, best_r)
  return best_err, best_r


def histogram(a, rng, bins):
  """Counts of |x| values ``a`` (float32) in ``bins`` bins over [0, rng] (bin floor(a * bins / rng), float32 like the observer)."""
  a = np.asarray(a, np.float32)
  inv = np.float32(bins) / np.float32(rng if rng > 0 else 1.0)
  idx = np.clip(np.floor(a * inv), 0, bins - 1).astype(np.int64)
  return np.bincount(idx, minlength=bins)


def kl_divergences(hist, nq):
  """KL(P || Q) for every candidate threshold i in [nq, bins] (TensorRT entropy calibration), float64.

  P: the first i bins with the mass beyond folded into bin i - 1. Q: those i bins merged into nq levels
  (bin j -> level j * nq // i), each level's mass spread evenly over its nonempty bins.
  """
  hist = np.asarray(hist, np.float64)
  bins = hist.size
  out = {}
  for i in range(nq, bins + 1):
    p = hist[:i].copy()
    p[i - 1] += hist[i:].sum()
    level = (np.arange(i) * nq) // i
    base = hist[:i]
    lsum = np.bincount(level, weights=base, minlength=nq)
    lnz = np.bincount(level, weights=(base > 0).astype(np.float64), minlength=nq)
    q = np.where(base > 0, lsum[level] / np.maximum(lnz[level], 1.0), 0.0)
    p, q = p / max(p.sum(), 1e-30), q / max(q.sum(), 1e-30)
    nz = p > 0
    out[i] = float(np.sum(p[nz] * (np.log(p[nz]) - np.log(np.maximum(q[nz], 1e-10)))))
  return out
