"""Histogram observers: Percentile, MSE and KL (TensorRT entropy) ranges from streaming per-tile histograms.

All three accumulate the same `histogram.HistogramState` (see `histogram.py` for the rebinning scheme and its
one-bin-width accuracy) and differ only in ``finalize``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jquant.calibration import base, histogram
from jquant.core import calibration_methods as cm
from jquant.core import ranges
from jquant.core.spec import QuantSpec

DEFAULT_BINS = 2048


def _check_bins(bins, what: str) -> int:
  if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
    raise ValueError(f"{what}: bins={bins!r} must be an int >= 16, e.g. 2048.")
  return bins


def _histogram_observer(spec: QuantSpec, bins: int, what: str, final_range) -> base.Observer:
  base.check_static_spec(spec, what)
  return base.make_observer(spec, what, histogram.HistogramState, lambda shape: histogram.init_state(shape, bins),
                            histogram.update_state, final_range)


def percentile_observer(spec: QuantSpec, *, bins: int = DEFAULT_BINS) -> base.Observer:
  """Streaming ``Percentile(q)``: the q-th percentile of ``|x|`` (symmetric), or the (100 - q)-th and q-th
  percentiles of ``x`` (asymmetric), read from the per-tile histogram.

  Accuracy: within one bin width (``<= 2 * absmax / bins``) of the order statistic of rank ``ceil(q * n / 100)``
  of all ``n`` observed values (``ceil((100 - q) * n / 100)`` for the lower end). ``np.percentile`` interpolates
  between neighbouring order statistics instead, so it can differ by one sample spacing more.
  """
  what = "percentile_observer"
  q = float(spec.calibration.q) if isinstance(spec.calibration, cm.Percentile) else 99.99
  bins = _check_bins(bins, what)

  def final_range(state):
    width = histogram.bin_width(state.range, bins)
    if spec.symmetric:
      hi = histogram.quantile(histogram.abs_hist(state), jnp.zeros_like(width), width, q / 100.0)
      hi = jnp.minimum(hi, histogram.absmax(state))
      return -hi, hi
    counts, edge0 = histogram.signed_hist(state), -width * bins
    lo = histogram.quantile(counts, edge0, width, 1.0 - q / 100.0)
    hi = histogram.quantile(counts, edge0, width, q / 100.0)
    return jnp.clip(lo, state.lo, state.hi), jnp.clip(hi, state.lo, state.hi)

  return _histogram_observer(spec, bins, what, final_range)


def mse_observer(spec: QuantSpec, *, bins: int = DEFAULT_BINS) -> base.Observer:
  """Streaming ``MSE(grid, min_ratio)``: the clip ratio ``r`` (of the exact running absmax, or of min / max for
  asymmetric specs) that minimises the quantization MSE of the histogram, each bin represented by its centre.

  The centre approximation drops a ``width**2 / 12`` term per value that does not depend on ``r`` (for bins
  narrower than the quantization step), so the chosen ratio tracks the exact search over all observed values.
  """
  what = "mse_observer"
  method = spec.calibration if isinstance(spec.calibration, cm.MSE) else cm.MSE()
  bins = _check_bins(bins, what)
  qt = spec.qtype

  def final_range(state):
    width = histogram.bin_width(state.range, bins)[..., None]
    centres = (jnp.arange(bins, dtype=jnp.float32) + 0.5) * width
    vals = jnp.concatenate([-centres[..., ::-1], centres], axis=-1)         # (*S, 2B), matches signed_hist
    cnt = histogram.signed_hist(state)
    amax = histogram.absmax(state)
    lo0, hi0 = state.lo, state.hi
    ratios = jnp.linspace(1.0, method.min_ratio, method.grid, dtype=jnp.float32)

    def err_for(r):
      if spec.symmetric:
        s, z = ranges.scale_from_range(-amax * r, amax * r, qt, True)
      else:
        s, z = ranges.scale_from_range(lo0 * r, hi0 * r, qt, False)
      zz = None if z is None else z[..., None]
      fq = ranges._fake_quant_tiles(vals, s[..., None], zz, qt)
      return jnp.sum(cnt * jnp.square(fq - vals), axis=-1)

    best = ratios[jnp.argmin(jax.lax.map(err_for, ratios), axis=0)]   # first minimum: widest range on ties
    if spec.symmetric:
      return -amax * best, amax * best
    return lo0 * best, hi0 * best

  return _histogram_observer(spec, bins, what, final_range)


def kl_observer(spec: QuantSpec, *, bins: int | None = None) -> base.Observer:
  """Streaming TensorRT entropy calibration (``KL(bins)``, symmetric integer specs): the ``|x|`` histogram is
  accumulated over batches with power-of-two range growth, then thresholded with the same KL search as dynamic
  quantization (`jquant.core.ranges.kl_threshold_bins`). When the first batch holds each tile's absmax (no
  rebinning), the threshold equals dynamic KL on the concatenated batches.
  """
  what = "kl_observer"
  if not (spec.qtype.is_int and spec.symmetric):
    raise ValueError(f"{what}: KL calibration supports symmetric integer qtypes only, got {spec.qtype.name} "
                     f"symmetric={spec.symmetric}; use percentile_observer or mse_observer instead.")
  if bins is None:
    bins = int(spec.calibration.bins) if isinstance(spec.calibration, cm.KL) else DEFAULT_BINS
  bins = _check_bins(bins, what)
  nq = int(spec.qtype.qmax) + 1
  if bins < nq:
    raise ValueError(f"{what}: {bins} bins cannot resolve the {nq} levels of {spec.qtype.name}; use bins >= {nq} "
                     "(e.g. KL(bins=2048)).")

  def final_range(state):
    s_shape = state.range.shape
    h = histogram.abs_hist(state).reshape(math.prod(s_shape), bins)
    best = jax.lax.map(lambda hh: ranges.kl_threshold_bins(hh, nq), h).reshape(s_shape)
    amax = histogram.absmax(state)
    thr = jnp.minimum(best.astype(jnp.float32) * histogram.bin_width(state.range, bins), amax)
    thr = jnp.where(state.range > 0, thr, 0.0)
    return -thr, thr

  return _histogram_observer(spec, bins, what, final_range)
