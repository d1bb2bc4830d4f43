"""quantize / dequantize: the numerics of every QType x granularity x symmetric/asymmetric.

Integer grids round half to even (or stochastically), then clip to [qmin, qmax]. Asymmetric dequantize computes
``(q - zero_point) * scale``, so dequantize(quantize(0.0)) == 0.0 exactly. Float8 saturates at +-max (no inf/NaN
from overflow). NF4 maps ``x / absmax`` to the nearest of the 16 levels (ties to the lower level).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core import calibration_methods as cm
from jquant.core import mx, ranges, tiling
from jquant.core.double_quant import DoubleQuantScale, double_quantize
from jquant.core.granularity import group_axis, scale_shape
from jquant.core.qarray import QArray
from jquant.core.qtypes import QType
from jquant.core.spec import QuantSpec

_F32_TINY = float(np.finfo(np.float32).tiny)


def check_float_array(x, what: str = "x") -> jax.Array:
  """Returns ``x`` as a jax array; TypeError for non-floating input."""
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{what} has dtype {x.dtype}; quantize needs a floating array (float32/bfloat16/float16). "
                    f"Cast it with {what}.astype(jnp.float32), or if it is already quantized, use it as is.")
  return x if isinstance(x, jax.Array) else jnp.asarray(x)


@jax.jit
def _all_finite(x):
  return jnp.all(jnp.isfinite(x))


def check_finite(x: jax.Array, what: str = "x") -> None:
  """Raises ValueError if a concrete array holds NaN/inf (skipped for tracers inside jit).

  The check is a jitted reduction, so a sharded array is not gathered to one device unless it is bad.
  """
  if isinstance(x, jax.core.Tracer) or bool(_all_finite(x)):
    return
  bad = ~np.isfinite(np.asarray(jax.device_get(x), dtype=np.float32))
  first = tuple(int(i) for i in np.argwhere(bad)[0])
  raise ValueError(f"{what} of shape {tuple(x.shape)} has {int(bad.sum())} NaN/inf values (first at index "
                   f"{first}); quantization needs finite values. Fix the source (a diverged checkpoint?) or "
                   f"clean it with jnp.nan_to_num before quantizing.")


def compute_qparams(x: jax.Array, spec: QuantSpec, weights=None):
  """The (scale, zero_point) that ``quantize(x, spec)`` uses; scale float32 (rounded through spec.scale_dtype),
  zero_point float32 holding integers (or None), both of shape ``spec.granularity.scale_shape``. Microscaling
  qtypes: the float32 grid scales solvers quantize with (`jquant.core.mx.grid_scales`; NVFP4 with tensor scale 1). ``weights``
  (broadcastable to ``x``) weight the quantization error of an ``MSE`` calibration's range search (importance)."""
  return _qparams_and_flag(x, spec, weights)[:2]


def _qparams_and_flag(x: jax.Array, spec: QuantSpec, weights=None):
  """(scale, zero_point, ok): ``ok`` is True iff every tile got a usable scale (finite input, a range float32 and
  ``spec.scale_dtype`` can hold). A tile without one gets a NaN scale, so under jit a NaN/inf input or an
  unrepresentable range shows up as NaN in `dequantize` instead of a finite wrong value. For max-based ranges
  NaN/inf propagate through the range reduction, so this costs no extra pass over ``x`` (a `where` on the scale)."""
  qt = spec.qtype
  if qt.is_mx:   # the format's grid for solvers (GPTQ); quantize() itself uses mx.quantize_mx
    scale = mx.grid_scales(x, spec)
    return scale, None, jnp.all(jnp.isfinite(scale))
  block = spec.granularity.block_shape(x.shape)
  xf = x.astype(jnp.float32)
  lo, hi = ranges.range_of(xf, block, qt, spec.symmetric, spec.calibration, weights)
  if isinstance(spec.calibration, (cm.AbsMax, cm.MinMax, cm.EMA)):
    tile_ok = jnp.isfinite(lo) & jnp.isfinite(hi)   # range_of maps NaN to +-inf: no extra pass
  else:   # search methods may drop NaN: one more reduction (they make many passes anyway)
    tile_ok = jnp.isfinite(ranges.range_of(xf, block, qt, True, cm.AbsMax())[1])
  scale, zp = ranges.scale_from_range(lo, hi, qt, spec.symmetric)
  if spec.scale_dtype != "float32":
    scale = scale.astype(spec.scale_jnp_dtype).astype(jnp.float32)
    if zp is not None:
      zp = jnp.clip(jnp.round(qt.qmin - jnp.minimum(lo, 0.0) / scale), qt.qmin, qt.qmax)
  tile_ok = tile_ok & ranges.usable_scale(scale)
  scale = jnp.where(tile_ok, scale, jnp.nan)
  return scale, zp, jnp.all(tile_ok)


def _needs_clip(qtype: QType) -> bool:
  info = jnp.iinfo(qtype.storage_dtype)
  return (float(info.min), float(info.max)) != (qtype.qmin, qtype.qmax)


def quantize_with_params(x, scale, zero_point, qtype: QType, block, *, key=None, stochastic: bool = False):
  """Quantizes ``x`` with given per-tile params; returns values in ``qtype.storage_dtype`` (logical shape)."""
  x = x.astype(jnp.float32)
  if qtype.is_int:
    def f(xi, s, z):
      v = xi / s
      if stochastic:
        u = jax.random.uniform(key, v.shape, jnp.float32)
        r = jnp.floor(v + u)
      else:
        r = jnp.round(v)
      if z is not None:
        r = r + z
      # XLA's float->int convert saturates to the storage range, so the clip is only needed when the qtype's
      # range is narrower than its storage (int3 in int8); skipping it halves the cost on CPU.
      return jnp.clip(r, qtype.qmin, qtype.qmax) if _needs_clip(qtype) else r
    zf = None if zero_point is None else zero_point.astype(jnp.float32)
    return tiling.broadcast_apply(f, x, block, scale, zf).astype(qtype.storage_dtype)
  if qtype.is_mx:
    f = lambda xi, s: mx.quantize_with_grid_scales(xi, s, qtype)
    return tiling.broadcast_apply(f, x, block, scale).astype(qtype.storage_dtype)
  if qtype.is_float:
    f = lambda xi, s: jnp.clip(xi / s, qtype.qmin, qtype.qmax)
    return tiling.broadcast_apply(f, x, block, scale).astype(qtype.storage_dtype)
  levels = np.asarray(qtype.levels, np.float32)
  mids = jnp.asarray((levels[1:] + levels[:-1]) / 2)
  def f(xi, s):
    v = xi / s
    return jnp.sum(v[..., None] > mids, axis=-1)
  return tiling.broadcast_apply(f, x, block, scale).astype(qtype.storage_dtype)


def dequantize_values(q, scale, zero_point, qtype: QType, block) -> jax.Array:
  """float32 values of quantized ``q`` with per-tile params (the inverse of `quantize_with_params`)."""
  if qtype.is_lut:
    v = jnp.asarray(qtype.levels, jnp.float32)[q.astype(jnp.int32)]
  else:
    v = q.astype(jnp.float32)
  if zero_point is None:
    return tiling.broadcast_apply(lambda a, s: a * s, v, block, scale.astype(jnp.float32))
  return tiling.broadcast_apply(lambda a, s, z: (a - z) * s, v, block, scale.astype(jnp.float32),
                                zero_point.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("spec", "with_finite_flag"))
def _quantize_jit(x, scale, zero_point, key, *, spec: QuantSpec, with_finite_flag: bool = False):
  """Quantizes; with ``with_finite_flag`` also returns all(isfinite(x)) computed in the same pass."""
  block = spec.granularity.block_shape(x.shape)
  if spec.qtype.is_mx:   # the format picks its own scales (core/mx.py)
    q, stored, flag = mx.quantize_mx(x, spec)
    qa = QArray(qvalue=q, scale=stored, zero_point=None, g_idx=None, qtype=spec.qtype, spec=spec, dtype=str(x.dtype))
    return (qa, flag) if with_finite_flag else qa
  if scale is None:
    scale, zero_point, flag = _qparams_and_flag(x, spec)
  else:
    scale = scale.astype(spec.scale_jnp_dtype).astype(jnp.float32)
    zero_point = None if zero_point is None else jnp.round(zero_point.astype(jnp.float32))
    # A NaN/inf element makes its tile's scale NaN (one reduction, replacing a separate all(isfinite(x))), so a
    # non-finite input reaches dequantize under jit; an unusable traced scale is NaN too.
    tile_ok = jnp.isfinite(ranges.range_of(x.astype(jnp.float32), block, spec.qtype, True, cm.AbsMax())[1])
    tile_ok = tile_ok & ranges.usable_scale(scale)
    scale = jnp.where(tile_ok, scale, jnp.nan)
    flag = jnp.all(tile_ok)
  if spec.double_quant:   # quantize with the scales dequantize will use, so the round trip is consistent
    stored = double_quantize(scale, spec.double_quant_block)
    scale = stored.dequantize()
  else:
    stored = scale.astype(spec.scale_jnp_dtype)
  q = quantize_with_params(x, scale, zero_point, spec.qtype, block, key=key, stochastic=spec.stochastic_rounding)
  zp = None if zero_point is None else zero_point.astype(spec.qtype.storage_dtype)
  qa = QArray(qvalue=q, scale=stored, zero_point=zp, g_idx=None, qtype=spec.qtype, spec=spec, dtype=str(x.dtype))
  if with_finite_flag:
    return qa, flag
  return qa


def quantize_checked(x, spec: QuantSpec, *, what: str = "x"):
  """Dispatches `quantize` for a concrete ``x`` and returns (qarray, finite_flag) without waiting; call
  `raise_if_not_finite` on the flag later. Lets many leaves be quantized back to back (quantize_params)."""
  return _quantize_jit(x, None, None, None, spec=spec, with_finite_flag=True)


def raise_if_not_finite(flag, x, what: str = "x", spec: QuantSpec | None = None) -> None:
  """Raises ValueError (naming the tile and the cause) when `quantize_checked`'s flag is False."""
  if bool(flag):
    return
  check_finite(x, what)   # NaN/inf values: that message names them
  if spec is not None:
    raise ValueError(unusable_scale_message(x, spec, what))
  raise ValueError(f"{what}: quantization produced unusable (non-finite or out-of-range) scales; check the range "
                   f"of {what}.")


def unusable_scale_message(x, spec: QuantSpec, what: str) -> str:
  """Explains (in float64, eagerly: the error path only) why a tile of finite ``x`` has no usable scale."""
  qt = spec.qtype
  block = spec.granularity.block_shape(x.shape)
  lo, hi = ranges.range_of(jnp.asarray(x, jnp.float32), block, qt, spec.symmetric, spec.calibration)
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  if spec.symmetric:
    raw = np.abs(hi) / (1.0 if qt.is_lut else qt.qmax)
  else:
    with np.errstate(over="ignore"):   # the float32 width is what quantize computes; it may overflow
      width = np.maximum(hi, 0.0).astype(np.float32) - np.minimum(lo, 0.0).astype(np.float32)
    raw = width.astype(np.float64) / (qt.qmax - qt.qmin)
  sd = spec.scale_dtype
  info = np.finfo(np.dtype(spec.scale_jnp_dtype)) if sd != "float32" else np.finfo(np.float32)
  smallest = float(info.smallest_subnormal) if sd != "float32" else 0.0
  bad = ~np.isfinite(raw) | (raw > min(float(info.max), ranges.MAX_SCALE)) | ((raw > 0) & (raw < smallest) if sd != "float32" else False)
  idx = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None
  where_ = f"tile {idx} (of scale shape {tuple(raw.shape)})" if idx is not None else "a tile"
  r = float(raw[idx]) if idx is not None else float("nan")
  rng = f"[{float(lo[idx]):.4g}, {float(hi[idx]):.4g}]" if idx is not None else "?"
  if not np.isfinite(r) or r > float(np.finfo(np.float32).max):
    cause = (f"its range {rng} spans more than float32 can hold (the width overflows to inf), so no {qt.name} "
             "scale exists")
  elif r > ranges.MAX_SCALE:
    cause = (f"its scale {r:.4g} exceeds {ranges.MAX_SCALE:.4g}: the reciprocal is subnormal and flushed to 0 on "
             "CPU/GPU, so every value would quantize to 0")
  else:
    cause = (f"its scale {r:.4g} does not fit scale_dtype={sd!r} (finite range [{smallest:.3g}, {float(info.max):.4g}])"
             f": it would {'overflow to inf' if r > float(info.max) else 'underflow to 0'}")
  return (f"{what} of shape {tuple(x.shape)} cannot be quantized with {qt.name} {spec.granularity}: {where_}: "
          f"{cause}. Fix: rescale the values (divide by a power of two and fold it into the next op)"
          f"{', store scales as float32 (scale_dtype=' + repr('float32') + ')' if sd != 'float32' else ''}, or use a "
          "finer granularity.")


def quantize(x, spec: QuantSpec, *, scale=None, zero_point=None, key=None, check_finite_values: bool = True) -> QArray:
  """Quantizes ``x`` to a `QArray`.

  Args:
    x: floating array of any rank.
    spec: the `QuantSpec` (qtype, granularity, symmetric, calibration, ...).
    scale: optional static scale of shape ``granularity.scale_shape(x.shape)`` (e.g. from an observer); if None
      the range is computed from ``x`` with ``spec.calibration`` (dynamic quantization).
    zero_point: static zero point (asymmetric specs only), same shape as ``scale``.
    key: PRNG key, required for ``spec.stochastic_rounding``.
    check_finite_values: raise ValueError for NaN/inf in concrete (non-traced) inputs.

  Returns:
    A `QArray` whose ``qvalue`` has the shape of ``x``.

  Raises:
    TypeError: ``x`` is not floating, or ``spec`` is not a QuantSpec.
    ValueError: NaN/inf in ``x``, a group size that does not divide the axis, an axis out of range, scale/zero
      point of the wrong shape, or a missing key for stochastic rounding.
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"quantize: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  x = check_float_array(x)
  if x.ndim == 0:
    raise ValueError("quantize: got a scalar; quantize arrays of rank >= 1 (reshape with x[None]).")
  expected = scale_shape(spec.granularity, x.shape)   # validates axes and divisibility
  if spec.stochastic_rounding and key is None:
    raise ValueError("quantize: spec.stochastic_rounding=True needs key=jax.random.key(...).")
  if key is not None and not (isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                                               or (key.dtype == jnp.uint32 and key.shape == (2,)))):
    raise TypeError(f"quantize: key must be a PRNG key from jax.random.key(seed), got {type(key).__name__} "
                    f"{getattr(key, 'dtype', '')}.")
  if scale is not None and spec.qtype.is_mx:
    raise ValueError(f"quantize: {spec.qtype.name} picks its block scales by the format's rule; pass scale=None.")
  if scale is not None:
    scale = jnp.asarray(scale)
    if tuple(scale.shape) != expected:
      raise ValueError(f"quantize: scale has shape {tuple(scale.shape)}, expected {expected} for "
                       f"{spec.granularity} on x{tuple(x.shape)}.")
    if not isinstance(scale, jax.core.Tracer):
      s64 = np.asarray(scale, np.float64)
      bad = ~(np.isfinite(s64) & (s64 >= _F32_TINY))
      if bad.any():
        raise ValueError(f"quantize: {int(bad.sum())} scale entries are non-finite, <= 0 or below float32's "
                         f"smallest normal {_F32_TINY:.3g} (flushed to 0 on CPU/GPU, giving NaN); e.g. "
                         f"{float(s64[bad].reshape(-1)[0])!r}. Clamp scales to >= "
                         f"{_F32_TINY:.3g} (all-zero tiles: use scale 1).")
      with np.errstate(over="ignore"):
        stored = np.asarray(jnp.asarray(scale).astype(spec.scale_jnp_dtype).astype(jnp.float32), np.float64)
      bad = (s64 > ranges.MAX_SCALE) | ~np.isfinite(stored) | (stored <= 0)
      if bad.any():
        raise ValueError(f"quantize: {int(bad.sum())} scale entries cannot be stored and used: e.g. "
                         f"{float(s64[bad].reshape(-1)[0])!r} (scale_dtype={spec.scale_dtype!r}; usable float32 "
                         f"scales are <= {ranges.MAX_SCALE:.4g}, beyond that 1/scale flushes to 0). Rescale the "
                         "values so that the scale fits, or store scales as float32 (scale_dtype='float32').")
    if spec.symmetric and zero_point is not None:
      raise ValueError("quantize: a symmetric spec takes no zero_point; pass zero_point=None or symmetric=False.")
    if not spec.symmetric and zero_point is None:
      raise ValueError("quantize: an asymmetric spec with a static scale needs zero_point= as well.")
    if zero_point is not None:
      zero_point = jnp.asarray(zero_point)
      if tuple(zero_point.shape) != expected:
        raise ValueError(f"quantize: zero_point has shape {tuple(zero_point.shape)}, expected {expected}.")
      if not isinstance(zero_point, jax.core.Tracer):
        z = np.asarray(zero_point, np.float64)
        qt = spec.qtype
        bad = ~(np.isfinite(z) & (z == np.round(z)) & (z >= qt.qmin) & (z <= qt.qmax))
        if bad.any():
          raise ValueError(f"quantize: {int(bad.sum())} zero_point entries are not integers in {qt.name}'s range "
                           f"[{int(qt.qmin)}, {int(qt.qmax)}], e.g. {float(z[bad].reshape(-1)[0])!r}; a zero point "
                           "is the integer code of 0.0 (use jq.compute_qparams, or round and clip it).")
  elif zero_point is not None:
    raise ValueError("quantize: zero_point was given without scale; pass both (static) or neither (dynamic).")
  if check_finite_values and not isinstance(x, jax.core.Tracer):
    if scale is None and not spec.stochastic_rounding:
      qa, ok = quantize_checked(x, spec)
      raise_if_not_finite(ok, x, spec=spec)
      return qa
    check_finite(x)
  return _quantize_jit(x, scale, zero_point, key, spec=spec)


def scale_f32(qa: QArray) -> jax.Array:
  """The float32 scale per tile (NVFP4: block scale times tensor scale, rounded once)."""
  if isinstance(qa.scale, (DoubleQuantScale, mx.NVFP4Scale)):
    return qa.scale.dequantize()
  return qa.scale.astype(jnp.float32)


def _take_groups(qa: QArray, a):
  """``a`` (scale-shaped) with act-order ``g_idx`` resolved: row ``g_idx[k]`` for element ``k`` of the group axis."""
  if a is None or qa.g_idx is None:
    return a
  ax = group_axis(qa.spec.granularity, qa.ndim)
  if ax is None:
    raise ValueError("QArray has g_idx but its granularity is not PerGroup.")
  if qa.g_idx.ndim == 1:
    return jnp.take(a, qa.g_idx, axis=ax)
  # stacked (scanned layers / experts): g_idx (*lead, K) holds one row map per leading index
  idx = jnp.expand_dims(qa.g_idx, tuple(range(qa.g_idx.ndim, a.ndim)))
  return jnp.take_along_axis(a, idx, axis=ax)


def expanded_params(qa: QArray):
  """(scale, zero_point, block) with act-order ``g_idx`` resolved: the per-tile params dequantize uses."""
  scale = _take_groups(qa, scale_f32(qa))
  zp = _take_groups(qa, qa.zero_point)
  block = tuple(n // s for n, s in zip(qa.shape, scale.shape))
  return scale, zp, block


def _dequantize_mx(qa: QArray) -> jax.Array:
  s = qa.scale
  s = mx.NVFP4Scale(_take_groups(qa, s.block), s.tensor) if isinstance(s, mx.NVFP4Scale) else _take_groups(qa, s)
  return mx.dequantize_mx(qa.qvalue, s, tuple(n // m for n, m in zip(qa.shape, s.shape)), qa.qtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _dequantize_jit(qa: QArray, dtype):
  if qa.qtype.is_mx:
    return _dequantize_mx(qa).astype(dtype)
  scale, zp, block = expanded_params(qa)
  return dequantize_values(qa.qvalue, scale, zp, qa.qtype, block).astype(dtype)


def dequantize(qa: QArray, dtype=None) -> jax.Array:
  """The float array a `QArray` stands for: ``(qvalue - zero_point) * scale`` (float32 math).

  Args:
    qa: the quantized array.
    dtype: output dtype; defaults to the dtype of the array that was quantized.
  """
  if not isinstance(qa, QArray):
    raise TypeError(f"dequantize: expected a jq.QArray, got {type(qa).__name__}; quantize it first with jq.quantize.")
  try:
    out = jnp.dtype(dtype or qa.dtype)
  except TypeError:
    raise TypeError(f"dequantize: dtype={dtype!r} is not a dtype; pass e.g. jnp.float32 or jnp.bfloat16.") from None
  if not jnp.issubdtype(out, jnp.floating):
    raise TypeError(f"dequantize: dtype={out} is not floating; dequantized values are real numbers (use "
                    "jnp.float32, jnp.bfloat16 or jnp.float16; the integer codes are qa.qvalue).")
  return _dequantize_jit(qa, out)
