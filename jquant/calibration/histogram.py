"""Streaming per-tile histograms with a growing range (power-of-two rebinning), for Percentile / MSE / KL observers.

Each tile keeps two histograms of ``bins`` equal bins over ``[0, R)``: one of ``x`` for ``x >= 0`` and one of ``-x``
for ``x < 0`` (together: the histogram of ``|x|``, or of ``x`` over ``[-R, R)``). ``R`` starts at the first nonzero
batch's absmax. When a batch exceeds ``R``, the range grows to ``R * 2**k`` (the smallest such power that covers the
new absmax, as TensorRT's calibrator does) and the bins are merged in groups of ``2**k``. The merge is exact: the
result is bit-for-bit the histogram the whole calibration set would give with the final range, since bin index
``floor(x * bins / R)`` and the power-of-two scaling commute in floating point.

The price of streaming: the final range is at most twice the data's absmax, so the bin width is at most
``2 * absmax / bins``. Statistics read from the histogram (percentiles, clip thresholds) are accurate to about one
bin width; the exact running min / max are kept alongside and clamp them.

Each histogram has one extra bin (index ``bins``) for values exactly at the top edge ``R`` (the first batch's
absmax lies there). It keeps the merge exact when the range grows later; readers fold it into the last bin.
Counts are int32: at most 2**31 - 1 values per tile and bin.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class HistogramState(NamedTuple):
  """State of the histogram observers (``S`` = scale shape, ``B`` = bins).

  Attributes:
    neg: (*S, B + 1) int32 counts of ``-x`` for negative ``x``, bins ``[i * R / B, (i + 1) * R / B)``; the last
      entry counts values at exactly ``R``.
    pos: (*S, B + 1) int32 counts of ``x >= 0``, same bins.
    range: (*S) float32 ``R``; 0 until a tile sees a nonzero value.
    lo: (*S) float32 exact running min (+inf before the first batch).
    hi: (*S) float32 exact running max (-inf before the first batch).
    count: () int32, batches observed.
    nonfinite: () int32, NaN/inf values seen under jit (left out of the statistics).
  """

  neg: jax.Array
  pos: jax.Array
  range: jax.Array
  lo: jax.Array
  hi: jax.Array
  count: jax.Array
  nonfinite: jax.Array


def init_state(scale_shape: tuple[int, ...], bins: int) -> HistogramState:
  z = jnp.zeros(scale_shape + (bins + 1,), jnp.int32)
  inf = jnp.full(scale_shape, jnp.inf, jnp.float32)
  return HistogramState(z, z, jnp.zeros(scale_shape, jnp.float32), inf, -inf,
                        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def bin_width(rng: jax.Array, bins: int) -> jax.Array:
  """Bin width per tile (a zero range gets width 1 / bins, where every value is 0 and lands in bin 0)."""
  return jnp.where(rng > 0, rng, 1.0) / bins


def bins_per_unit(rng: jax.Array, bins: int) -> jax.Array:
  """``bins / R`` per tile: a value ``a`` falls in bin ``floor(a * bins / R)``.

  Binning multiplies by this reciprocal rather than dividing by the width: XLA may rewrite a division by a
  broadcast into such a multiplication anyway, and writing it explicitly makes the binning reproducible. Both
  ``bins / R`` and the product scale exactly by powers of two, which keeps the rebinning exact.
  """
  return bins / jnp.where(rng > 0, rng, 1.0)


def _grow(rng: jax.Array, amax: jax.Array):
  """New range and the power-of-two merge factor exponent ``k`` per tile."""
  have = rng > 0
  ratio = amax / jnp.where(have, rng, 1.0)
  k = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(ratio, 1.0))), 0, 31).astype(jnp.int32)
  k = jnp.where(rng * jnp.exp2(k.astype(jnp.float32)) < amax, k + 1, k)   # guard log2 rounding
  k = jnp.where(have & (amax > rng), jnp.minimum(k, 31), 0)
  new = jnp.where(have, rng * jnp.exp2(k.astype(jnp.float32)), amax)
  return new, k


def _tile_bincount(idx: jax.Array, weights: jax.Array, bins: int) -> jax.Array:
  """Per-tile bincount: idx, weights (P, T) -> (P, bins) int32."""
  p = idx.shape[0]
  seg = idx + (jnp.arange(p, dtype=jnp.int32) * bins)[:, None]
  out = jax.ops.segment_sum(weights.reshape(-1), seg.reshape(-1), num_segments=p * bins)
  return out.reshape(p, bins)


def update_state(state: HistogramState, t: jax.Array, valid: jax.Array, bad: jax.Array) -> HistogramState:
  """Adds one batch of tiles ``t`` (*S, T) (non-finite entries zeroed, ``valid`` False there)."""
  s_shape, nb = state.range.shape, state.pos.shape[-1]
  bins, p = nb - 1, math.prod(s_shape)
  a = jnp.abs(t)
  new_rng, k = _grow(state.range, jnp.max(a, axis=-1))
  j = jnp.arange(nb, dtype=jnp.int32)[None, :]
  merged_idx = jnp.right_shift(j, k.reshape(p, 1))                         # (P, B + 1): old bin -> new bin
  neg = _tile_bincount(merged_idx, state.neg.reshape(p, nb), nb)
  pos = _tile_bincount(merged_idx, state.pos.reshape(p, nb), nb)
  inv = bins_per_unit(new_rng, bins)[..., None]
  idx = jnp.clip(jnp.floor(a * inv), 0, bins).astype(jnp.int32).reshape(p, -1)   # bins: at the top edge R
  vpos = (valid & (t >= 0)).astype(jnp.int32).reshape(p, -1)
  vneg = (valid & (t < 0)).astype(jnp.int32).reshape(p, -1)
  neg = (neg + _tile_bincount(idx, vneg, nb)).reshape(s_shape + (nb,))
  pos = (pos + _tile_bincount(idx, vpos, nb)).reshape(s_shape + (nb,))
  lo = jnp.minimum(state.lo, jnp.min(jnp.where(valid, t, jnp.inf), axis=-1))
  hi = jnp.maximum(state.hi, jnp.max(jnp.where(valid, t, -jnp.inf), axis=-1))
  return HistogramState(neg, pos, new_rng, lo, hi, state.count + 1, state.nonfinite + bad)


def absmax(state: HistogramState) -> jax.Array:
  return jnp.maximum(jnp.abs(state.lo), jnp.abs(state.hi))


def folded(h: jax.Array) -> jax.Array:
  """(*S, B + 1) -> (*S, B) float32: the top-edge entry joins the last bin, which becomes ``[R - width, R]``."""
  return jnp.concatenate([h[..., :-2], h[..., -2:-1] + h[..., -1:]], axis=-1).astype(jnp.float32)


def abs_hist(state: HistogramState) -> jax.Array:
  """(*S, B) float32 histogram of ``|x|`` over ``[0, R]``."""
  return folded(state.neg + state.pos)


def signed_hist(state: HistogramState) -> jax.Array:
  """(*S, 2B) float32 histogram of ``x`` over ``[-R, R]``."""
  return jnp.concatenate([folded(state.neg)[..., ::-1], folded(state.pos)], axis=-1)


def quantile(counts: jax.Array, edge0: jax.Array, width: jax.Array, frac: float) -> jax.Array:
  """The value below which a fraction ``frac`` of the histogram's mass lies, linear within a bin.

  Args:
    counts: (*S, n) float32 bin counts; bin i covers ``[edge0 + i * width, edge0 + (i + 1) * width)``.
    edge0, width: (*S) left edge and bin width.
    frac: in [0, 1].

  Returns:
    (*S) float32; exact at bin edges, so within one bin width of the empirical quantile.
  """
  cum = jnp.cumsum(counts, axis=-1)
  target = frac * cum[..., -1:]
  i = jnp.argmax(cum >= target, axis=-1)[..., None]
  ci = jnp.take_along_axis(counts, i, axis=-1)
  prev = jnp.take_along_axis(cum, i, axis=-1) - ci
  f = jnp.clip((target - prev) / jnp.maximum(ci, 1.0), 0.0, 1.0)
  return edge0 + (i[..., 0] + f[..., 0]) * width
