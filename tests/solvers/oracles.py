"""NumPy float64 oracles for the solver tests, written from the reference descriptions (EVAL.md B1-B4).

They use the reference layout W (out, in) = (N, K), i.e. the transpose of the Flax kernel, and plain Python loops,
so that they share no code (and no layout) with jquant's jitted solvers.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(name: str) -> np.random.Generator:
  return np.random.default_rng(zlib.crc32(name.encode()))


def grid_params(x: np.ndarray, qmin: int, qmax: int, symmetric: bool):
  """jq's grid for the rows of ``x`` (N, g): per-row (scale, zero), computed in the dtype of ``x``."""
  if symmetric:
    amax = np.abs(x).max(axis=1)
    scale = amax / qmax
    scale = np.where(scale > 0, scale, 1.0)
    return scale, np.zeros_like(scale)
  lo = np.minimum(x.min(axis=1), 0.0)
  hi = np.maximum(x.max(axis=1), 0.0)
  if x.dtype == np.float32:   # XLA turns the division by a constant into a multiply by its float32 reciprocal
    scale = (hi - lo) * np.float32(1.0 / (qmax - qmin))
  else:
    scale = (hi - lo) / (qmax - qmin)
  scale = np.where(scale > 0, scale, 1.0).astype(x.dtype)
  zero = np.clip(np.round(qmin - lo / scale), qmin, qmax)
  return scale, zero


def quant(x, scale, zero, qmin, qmax):
  """codes and dequantized values (round half to even, as torch.round and jnp.round)."""
  q = np.clip(np.round(x / scale) + zero, qmin, qmax)
  return q, (q - zero) * scale


def gptq_oracle(W, H, *, qmin, qmax, symmetric, groupsize=-1, blocksize=128, percdamp=0.01, actorder=False,
                static_groups=False):
  """The reference fasterquant loop on W (N, K) in float64; returns (codes (N, K), scales, zeros, losses (N, K))."""
  W = W.astype(np.float64).copy()
  H = H.astype(np.float64).copy()
  N, K = W.shape
  scale, zero = grid_params(W, qmin, qmax, symmetric)          # per-row grid, before dead columns
  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  groups = []
  if static_groups:
    for i in range(0, K, groupsize):
      groups.append(grid_params(W[:, i:i + groupsize], qmin, qmax, symmetric))
  perm = np.arange(K)
  if actorder:
    perm = np.argsort(-np.diag(H), kind="stable")
    W = W[:, perm]
    H = H[perm][:, perm]
  invperm = np.argsort(perm)
  Q = np.zeros_like(W)
  Losses = np.zeros_like(W)
  damp = percdamp * np.mean(np.diag(H))
  H[np.arange(K), np.arange(K)] += damp
  Hinv = np.linalg.inv(H)
  U = np.linalg.cholesky(Hinv).T                                # upper: U^T U = H^-1
  group_params = {}
  for i1 in range(0, K, blocksize):
    i2 = min(i1 + blocksize, K)
    W1 = W[:, i1:i2].copy()
    Err1 = np.zeros_like(W1)
    U1 = U[i1:i2, i1:i2]
    for i in range(i2 - i1):
      w = W1[:, i]
      d = U1[i, i]
      if groupsize != -1:
        if not static_groups:
          if (i1 + i) % groupsize == 0:
            scale, zero = grid_params(W[:, i1 + i:i1 + i + groupsize], qmin, qmax, symmetric)
            group_params[(i1 + i) // groupsize] = (scale, zero)
        else:
          scale, zero = groups[perm[i1 + i] // groupsize]
      q, deq = quant(w, scale, zero, qmin, qmax)
      Q[:, i1 + i] = q
      Losses[:, i1 + i] = (w - deq) ** 2 / d ** 2 / 2
      err = (w - deq) / d
      W1[:, i:] -= np.outer(err, U1[i, i:])
      Err1[:, i] = err
    W[:, i2:] -= Err1 @ U[i1:i2, i2:]
  Q = Q[:, invperm]
  Losses = Losses[:, invperm]
  if groupsize == -1:
    return Q, scale[None], zero[None], Losses
  if static_groups:
    gs = np.stack([p[0] for p in groups]), np.stack([p[1] for p in groups])
  else:
    gs = (np.stack([group_params[j][0] for j in range(K // groupsize)]),
          np.stack([group_params[j][1] for j in range(K // groupsize)]))
  return Q, gs[0], gs[1], Losses


def structured_layer(rng, k, n, t, *, outliers=4, outlier_scale=8.0):
  """Correlated inputs with a few outlier channels and a matching weight: x (t, k), w (k, n)."""
  mix = rng.normal(size=(k, k)) / np.sqrt(k)
  base = rng.normal(size=(t, k)) @ (np.eye(k) + 0.9 * mix)
  chan = np.exp(rng.normal(scale=0.5, size=k))
  idx = rng.choice(k, size=outliers, replace=False)
  chan[idx] *= outlier_scale
  x = base * chan
  w = rng.normal(size=(k, n)) / np.sqrt(k)
  w += rng.standard_t(df=3, size=(k, n)) * 0.02
  return x.astype(np.float32), w.astype(np.float32)


def fake_quant_groups(w, g, qmin, qmax, symmetric, grid_dtype=np.float64):
  """jq-grid quantize-dequantize of a kernel (K, N) in groups of g rows (g = K: per output column).

  ``grid_dtype=np.float32`` computes the grid (scale, zero point) in float32 like jq does; this matters where the
  zero point lands on an exact .5 tie (a range clamped symmetrically), which float32 and float64 may round apart.
  """
  k, n = w.shape
  out = np.empty_like(w, dtype=np.float64)
  for j in range(0, k, g):
    blk = w[j:j + g].T.astype(grid_dtype)                # (N, g) rows = output columns
    scale, zero = grid_params(blk, qmin, qmax, symmetric)
    if grid_dtype == np.float32:                         # XLA divides by a broadcast scale as x * (1 / scale)
      q = np.clip(np.round(blk * (np.float32(1.0) / scale[:, None])) + zero[:, None], qmin, qmax)
      deq = (q.astype(np.float64) - zero[:, None]) * scale[:, None].astype(np.float64)
    else:
      _, deq = quant(blk, scale[:, None], zero[:, None], qmin, qmax)
    out[j:j + g] = deq.T
  return out


def awq_duo_weight_mean(ws, g):
  """AutoAWQ's w_mean: per input row, the mean over all output columns of |w| / (its group's absmax + 1e-6)."""
  w = np.abs(np.concatenate(ws, axis=1).astype(np.float64))
  out = np.zeros(w.shape[0])
  for j in range(0, w.shape[0], g):
    blk = w[j:j + g]
    out[j:j + g] = (blk / (blk.max(axis=0, keepdims=True) + 1e-6)).mean(axis=1)
  return out


def awq_scale_oracle(ws, act, x, *, g, qmin, qmax, symmetric, n_grid=20, duo=False):
  """auto_scale: exhaustive alpha loop, float64; returns (best alpha, errors). ``duo``: AutoAWQ's duo scaling."""
  x = x.astype(np.float64)
  ref = np.concatenate([x @ w for w in ws], axis=1)
  w_mean = awq_duo_weight_mean(ws, g) if duo else None
  errs = []
  for i in range(n_grid):
    ratio = i / n_grid
    if duo:
      s = np.maximum(act.astype(np.float64) ** ratio / (w_mean ** (1 - ratio) + 1e-4), 1e-4)
    else:
      s = np.maximum(act.astype(np.float64) ** ratio, 1e-4)
    s = s / np.sqrt(s.max() * s.min())
    out = np.concatenate([x @ (fake_quant_groups(w * s[:, None], g, qmin, qmax, symmetric) / s[:, None])
                          for w in ws], axis=1)
    errs.append(np.mean((ref - out) ** 2))
  best = -1
  best_err = float("inf")
  for i, e in enumerate(errs):
    if e < best_err:
      best, best_err = i, e
  return best / n_grid, np.array(errs)


def awq_clip_oracle(w, x, *, g, qmin, qmax, symmetric, n_grid=20, max_shrink=0.5, n_sample=512, mode="absmax"):
  """auto_clip on one kernel (K, N): per group and output column, partial products over strided tokens.

  Returns the best upper bounds (K // g, N); with ``mode="minmax"`` returns (lower, upper), both ends of the range
  [min(w, 0), max(w, 0)] shrunk by the same factor."""
  x = x.astype(np.float64)[:: max(x.shape[0] // n_sample, 1)]
  k, n = w.shape
  w = w.astype(np.float32)
  best = np.zeros((k // g, n))
  best_lo = np.zeros((k // g, n))
  for j in range(0, k, g):
    wg = w[j:j + g]                                        # (g, N) float32, as the clamp bounds below
    org_out = x[:, j:j + g] @ wg.astype(np.float64)        # (T, N) partial products of this group
    if mode == "absmax":
      hi0 = np.abs(wg).max(axis=0)
      lo0 = -hi0
    else:
      hi0, lo0 = np.maximum(wg.max(axis=0), 0), np.minimum(wg.min(axis=0), 0)
    min_err = np.full(n, 1e9)
    best_max, best_min = hi0.copy(), lo0.copy()
    for i_s in range(int(max_shrink * n_grid)):
      p = np.float32(1 - i_s / n_grid)
      max_val, min_val = hi0 * p, lo0 * p
      cur = np.clip(wg, min_val, max_val)
      qw = fake_quant_groups(cur, g, qmin, qmax, symmetric, grid_dtype=np.float32)
      err = np.mean((x[:, j:j + g] @ qw - org_out) ** 2, axis=0)
      better = err < min_err
      min_err[better] = err[better]
      best_max[better] = max_val[better]
      best_min[better] = min_val[better]
    best[j // g] = best_max
    best_lo[j // g] = best_min
  return best if mode == "absmax" else (best_lo, best)
