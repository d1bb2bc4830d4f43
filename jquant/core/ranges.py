"""Per-tile ranges from data, for every calibration method (dynamic quantization and observer finalize).

All functions take tiles ``t`` of shape (*scale_shape, T) in float32 and reduce the last axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core import calibration_methods as cm
from jquant.core import tiling
from jquant.core.qtypes import QType

F32_TINY = float(np.finfo(np.float32).tiny)
# A larger scale has a subnormal reciprocal, which CPUs/GPUs flush to 0: x / scale (computed as x * (1 / scale))
# would be 0 for every x. Scales outside [F32_TINY, MAX_SCALE] cannot be used.
MAX_SCALE = float(np.float32(1.0) / np.float32(F32_TINY))


def scale_from_range(lo: jax.Array, hi: jax.Array, qtype: QType, symmetric: bool):
  """Turns a range into (scale, zero_point); zero_point is None when symmetric.

  Symmetric: ``hi`` is the absmax; scale = absmax / qmax (integer and float8) or absmax (NF4).
  Asymmetric (integers): the range is widened to contain 0, scale = (hi - lo) / (qmax - qmin),
  zero_point = clip(round(qmin - lo / scale), qmin, qmax), so that 0.0 is exactly representable.
  A zero-width range gets scale 1 (every value quantizes to the zero point); a positive scale below float32's
  smallest normal is raised to it (a subnormal divisor is flushed to 0). A NaN/inf range gives a NaN/inf scale:
  non-finite inputs are never turned into a finite scale (callers check with `usable_scale`).
  """
  if symmetric:
    amax = jnp.abs(hi)
    denom = 1.0 if qtype.is_lut else qtype.qmax
    scale = amax / denom     # may flush to 0 for a tiny amax: test the range, not the scale
    return jnp.where(amax == 0, 1.0, jnp.maximum(scale, F32_TINY)).astype(jnp.float32), None
  lo = jnp.minimum(lo, 0.0)
  hi = jnp.maximum(hi, 0.0)
  width = hi - lo
  scale = width / (qtype.qmax - qtype.qmin)
  scale = jnp.where(width == 0, 1.0, jnp.maximum(scale, F32_TINY)).astype(jnp.float32)
  zp = jnp.clip(jnp.round(qtype.qmin - lo / scale), qtype.qmin, qtype.qmax)
  return scale, zp


def usable_scale(scale: jax.Array) -> jax.Array:
  """True where a float32 scale can be used: finite and in [F32_TINY, MAX_SCALE] (False for NaN)."""
  return (scale >= F32_TINY) & (scale <= MAX_SCALE)


def absmax_nan_on_top(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """max |x| over ``axis`` (float32) that is NaN if any reduced element is NaN (inf if one is inf, no NaN).

  XLA:CPU float max may drop NaN; an integer max of the |x| bit patterns is exact for non-negative floats and puts
  NaN (bits above +inf's) on top, in the same single pass.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32) & jnp.int32(0x7FFFFFFF)
  return jax.lax.bitcast_convert_type(jnp.max(bits, axis=axis, keepdims=keepdims), jnp.float32)


def _fake_quant_tiles(t, scale, zp, qtype: QType):
  """Quantize-dequantize of tiles with per-tile (scale, zp) of shape (..., 1); used by the MSE search."""
  if qtype.is_int:
    z = 0.0 if zp is None else zp
    q = jnp.clip(jnp.round(t / scale) + z, qtype.qmin, qtype.qmax)
    return (q - z) * scale
  if qtype.is_float:
    v = jnp.clip(t / scale, qtype.qmin, qtype.qmax).astype(qtype.storage_dtype).astype(jnp.float32)
    return v * scale
  levels = jnp.asarray(qtype.levels, jnp.float32)
  mids = (levels[1:] + levels[:-1]) / 2
  code = jnp.sum(t[..., None] / scale[..., None] > mids, axis=-1)
  return levels[code] * scale


def _mse_search(t, qtype: QType, symmetric: bool, method: cm.MSE, weights=None):
  """The candidate range ``r * (min, max)`` (``r * absmax`` symmetric), r in ``linspace(1, min_ratio, grid)``, with
  the least ``sum weights * (Q(t) - t)^2`` per tile (weights: tiles like ``t``, e.g. the per-input-channel
  activation second moments of an importance-weighted "imatrix" search; None: plain MSE). The candidates run as a
  vmap, in chunks that keep the candidate errors near 64 Mi floats."""
  lo0 = jnp.min(t, axis=-1)
  hi0 = jnp.max(t, axis=-1)
  amax0 = jnp.max(jnp.abs(t), axis=-1)
  ratios = jnp.linspace(1.0, method.min_ratio, method.grid, dtype=jnp.float32)

  def err_for(r):
    if symmetric:
      s, z = scale_from_range(-amax0 * r, amax0 * r, qtype, True)
    else:
      s, z = scale_from_range(lo0 * r, hi0 * r, qtype, False)
    zz = None if z is None else z[..., None]
    e = jnp.square(_fake_quant_tiles(t, s[..., None], zz, qtype) - t)
    return jnp.sum(e if weights is None else e * weights, axis=-1)

  chunk = int(max(1, min(method.grid, (1 << 26) // max(int(np.prod(t.shape)), 1))))
  errs = jax.lax.map(err_for, ratios, batch_size=chunk)   # (grid, *scale_shape)
  best = ratios[jnp.argmin(errs, axis=0)]        # first minimum -> prefers the widest range on ties
  return lo0 * best, hi0 * best, amax0 * best


def kl_threshold_bins(hist: jax.Array, nq: int) -> jax.Array:
  """TensorRT entropy calibration on one histogram of ``|x|``: how many leading bins to keep.

  Args:
    hist: (bins,) float32 counts over equal-width bins ``[i * width, (i + 1) * width)`` starting at 0.
    nq: number of quantized levels on one side (``qmax + 1``; 128 for int8).

  Returns:
    int32 scalar ``i`` in ``[nq, bins]``: clip at ``i * width``. Also used by the streaming KL observer
    (`jquant.calibration`), whose histogram is accumulated over batches.

  Raises:
    ValueError: ``bins < nq`` (there is no candidate threshold).
  """
  bins = hist.shape[-1]
  if bins < nq:
    raise ValueError(f"KL calibration with {bins} bins cannot resolve {nq} quantized levels; use "
                     f"KL(bins=...) with bins >= {nq} (e.g. 2048).")
  j = jnp.arange(bins)
  csum = jnp.cumsum(hist[::-1])[::-1]   # csum[i] = sum(hist[i:])

  def kl_for(i):
    inside = j < i
    p = jnp.where(inside, hist, 0.0)
    p = p + jnp.where(j == i - 1, jnp.where(i < bins, csum[jnp.minimum(i, bins - 1)], 0.0), 0.0)
    level = jnp.where(inside, (j * nq) // i, nq)          # nq = dump segment for bins outside
    base = jnp.where(inside, hist, 0.0)
    lsum = jax.ops.segment_sum(base, level, num_segments=nq + 1)
    lnz = jax.ops.segment_sum((base > 0).astype(jnp.float32), level, num_segments=nq + 1)
    q = jnp.where(inside & (hist > 0), lsum[level] / jnp.maximum(lnz[level], 1.0), 0.0)
    p = p / jnp.maximum(jnp.sum(p), 1e-30)
    q = q / jnp.maximum(jnp.sum(q), 1e-30)
    terms = jnp.where(p > 0, p * (jnp.log(p) - jnp.log(jnp.maximum(q, 1e-10))), 0.0)
    return jnp.sum(terms)

  cands = jnp.arange(nq, bins + 1)
  kls = jax.lax.map(kl_for, cands)
  return cands[jnp.argmin(kls)]


def _kl_threshold(a: jax.Array, nq: int, bins: int) -> jax.Array:
  """TensorRT entropy calibration on one tile's |x| values ``a`` (T,): returns the clipping threshold."""
  amax = jnp.max(a)
  safe = jnp.where(amax > 0, amax, 1.0)
  width = safe / bins
  idx = jnp.clip(jnp.floor(a / width).astype(jnp.int32), 0, bins - 1)
  hist = jnp.bincount(idx, length=bins).astype(jnp.float32)
  best = kl_threshold_bins(hist, nq)
  return jnp.where(amax > 0, (best.astype(jnp.float32)) * width, 0.0)


def tile_range(t: jax.Array, qtype: QType, symmetric: bool, method, weights=None) -> tuple[jax.Array, jax.Array]:
  """(lo, hi) per tile for a calibration method; for symmetric specs lo = -hi and hi is the absmax. ``weights``
  (tiles like ``t``) weight the error of the MSE search (other methods take none)."""
  if weights is not None and not isinstance(method, cm.MSE):
    raise ValueError(f"importance weights need an MSE calibration (the weighted range search), got {method!r}; "
                     "use spec.replace(calibration=jq.MSE(...)).")
  if isinstance(method, cm.MSE):
    lo, hi, amax = _mse_search(t, qtype, symmetric, method, weights)
    return (-amax, amax) if symmetric else (lo, hi)
  if isinstance(method, cm.Percentile):
    if symmetric:
      hi = jnp.percentile(jnp.abs(t), method.q, axis=-1)
      return -hi, hi
    return jnp.percentile(t, 100.0 - method.q, axis=-1), jnp.percentile(t, method.q, axis=-1)
  if isinstance(method, cm.KL):
    nq = int(qtype.qmax) + 1
    flat = jnp.abs(t).reshape(-1, t.shape[-1])
    thr = jax.lax.map(lambda a: _kl_threshold(a, nq, method.bins), flat).reshape(t.shape[:-1])
    return -thr, thr
  if symmetric:   # AbsMax, EMA (single tensor)
    hi = jnp.max(jnp.abs(t), axis=-1)
    return -hi, hi
  return jnp.min(t, axis=-1), jnp.max(t, axis=-1)   # MinMax, EMA


def tile_all_finite(x: jax.Array, axes, keepdims: bool = False) -> jax.Array:
  """True per reduced tile iff every element of ``x`` over ``axes`` is finite (NaN and +-inf give False).

  ``sum(x * 2^-e)`` with ``2^e >= 2 n`` for ``n`` reduced elements: for finite ``x`` the sum is at most float32
  max / 2 in magnitude (no overflow, whatever the rounding), a NaN or inf element makes it non-finite. One
  read-only pass that XLA:CPU fuses into the reduction (an ``isfinite`` + ``all`` is not fused).
  """
  axes = tuple(a % x.ndim for a in (axes if isinstance(axes, (tuple, list)) else (axes,)))
  n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
  e = max(1, int(np.ceil(np.log2(max(n, 1)))) + 1)
  return jnp.isfinite(jnp.sum(x * jnp.float32(2.0 ** -e), axis=axes, keepdims=keepdims))


def range_of(x: jax.Array, block, qtype: QType, symmetric: bool, method, weights=None) -> tuple[jax.Array, jax.Array]:
  """(lo, hi) of shape ``x.shape // block`` for a calibration method (``weights``: x-shaped error weights of the
  MSE search, see `tile_range`).

  AbsMax/MinMax/EMA reduce the free interleaved view directly (no transpose: one pass over ``x``); the search
  methods (Percentile, MSE, KL) work on contiguous tiles.
  """
  if isinstance(method, (cm.AbsMax, cm.MinMax, cm.EMA)) and weights is None:
    if tiling.is_plain_broadcast(x.shape, block):
      xi, axes, kw = x, tuple(i for i, b in enumerate(block) if b > 1), dict(keepdims=True)
    else:
      xi, axes, kw = x.reshape(tiling.interleaved_shape(x.shape, block)), tuple(range(1, 2 * x.ndim, 2)), {}
    # XLA:CPU max/min reductions may drop NaN. A tile holding NaN/inf is found by a scaled sum instead (finite iff
    # every element is), so that each reduction reads ``x`` directly: XLA:CPU fuses |x| and x * c into its reduction
    # but materialises a select or a bitcast (a full-size temporary: 2x the traffic).
    ok = tile_all_finite(xi, axes, **kw)
    if symmetric:
      hi = jnp.where(ok, jnp.max(jnp.abs(xi), axis=axes, **kw), jnp.nan)
      return -hi, hi
    return (jnp.where(ok, jnp.min(xi, axis=axes, **kw), jnp.nan),
            jnp.where(ok, jnp.max(xi, axis=axes, **kw), jnp.nan))
  wt = None if weights is None else tiling.to_tiles(jnp.broadcast_to(weights, x.shape).astype(jnp.float32), block)
  return tile_range(tiling.to_tiles(x, block), qtype, symmetric, method, wt)
