"""LSQ / LSQ+: fake quantization with a learned step size (and learned zero point when asymmetric).

Forward, per tile with scale ``s`` and zero point ``z`` (``z = 0`` for symmetric specs)::

    zr = clip(round(z), qmin, qmax)
    q  = clip(round(x / s) + zr, qmin, qmax)
    y  = (q - zr) * s                       # == jq.dequantize(jq.quantize(x, spec, scale=s, zero_point=zr))

Backward (Esser et al. 2020, "Learned Step Size Quantization"; Bhalgat et al. 2020, LSQ+), with the gradient
scale ``g = 1 / sqrt(numel_per_scale * qmax)``::

    dy/dx = 1 inside [(qmin - zr) s, (qmax - zr) s], else 0          (clipped straight-through)
    dy/ds = round(x / s) - x / s inside; (qmin - zr) below; (qmax - zr) above          (times g)
    dy/dz = 0 inside; -s outside                                        (times g; round(z) is straight-through)

The step size is ``|scale|`` (`lsq_step`): an optimizer step that carries a learned scale through zero (Adam moves
a ~1e-3 step by ~lr per update) leaves a valid grid, and every converter (``jquant.qat.convert``, the Flax
wrappers' ``convert``) quantizes with the same ``|scale|``, so converted weights equal the trained fake-quant bit
for bit. Integer qtypes only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core import granularity as gr
from jquant.core import tiling
from jquant.core.calibration_methods import MinMax
from jquant.core.qarray import QArray
from jquant.core.quantize import compute_qparams, quantize
from jquant.core.spec import QuantSpec
from jquant.qat.fake_quant import _check_spec, _check_x

__all__ = ("lsq_fake_quant", "lsq_grad_scale", "lsq_init", "lsq_quantize", "lsq_step")


def lsq_grad_scale(spec: QuantSpec, shape) -> float:
  """``1 / sqrt(numel_per_scale * qmax)`` for an array of ``shape`` under ``spec``."""
  n = math.prod(spec.granularity.block_shape(tuple(shape)))
  return 1.0 / math.sqrt(n * spec.qtype.qmax)


def lsq_step(scale: jax.Array) -> jax.Array:
  """The step size a learned ``scale`` stands for: ``|scale|`` (its gradient flows through ``abs``)."""
  return jnp.abs(jnp.asarray(scale))


def lsq_quantize(x: jax.Array, scale: jax.Array, zero_point: jax.Array | None, spec: QuantSpec) -> QArray:
  """The integer `QArray` a trained ``lsq_fake_quant(x, scale, zero_point, spec)`` stands for: step ``|scale|``,
  zero point rounded and clipped to the grid; its dequantization equals the fake-quant forward bit for bit. Every
  converter (``jquant.qat.convert``, ``jquant.flax.nnx.convert_model``) goes through it."""
  if zero_point is not None:
    zero_point = jnp.clip(jnp.round(jnp.asarray(zero_point, jnp.float32)), spec.qtype.qmin, spec.qtype.qmax)
  return quantize(x, spec, scale=lsq_step(scale), zero_point=zero_point)


def _tile_sum(v: jax.Array, block) -> jax.Array:
  return jnp.sum(tiling.to_tiles(v, block), axis=-1)


def _lsq_forward(spec: QuantSpec, x, scale, zero_point):
  """(y, per-element dy/ds before the gradient scale, in-range mask, float32 scale). Same ops as core quantize."""
  qt = spec.qtype
  block = spec.granularity.block_shape(x.shape)
  view = tiling.scale_view_shape(x.shape, block)
  s = scale.astype(spec.scale_jnp_dtype).astype(jnp.float32)
  si = s.reshape(view)
  v = x.astype(jnp.float32).reshape(tiling.interleaved_shape(x.shape, block)) / si
  r = jnp.round(v)
  if zero_point is None:
    q = jnp.clip(r, qt.qmin, qt.qmax)
    qc, lo, hi = q, qt.qmin, qt.qmax
  else:
    zi = jnp.clip(jnp.round(zero_point.astype(jnp.float32)), qt.qmin, qt.qmax).reshape(view)
    q = jnp.clip(r + zi, qt.qmin, qt.qmax)
    qc, lo, hi = q - zi, qt.qmin - zi, qt.qmax - zi
  inside = (v >= lo) & (v <= hi)
  # A NaN/inf input (or scale) stays non-finite: NaN output, NaN step-size and input gradients (never clipped to a
  # finite value), so a loss-scaled step sees it and skips.
  finite = jnp.isfinite(v)
  qc = jnp.where(finite, qc, jnp.nan)
  y = (qc * si).reshape(x.shape).astype(x.dtype)
  ds = jnp.where(inside, r - v, qc).reshape(x.shape)
  return y, ds, inside.reshape(x.shape), s


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lsq(spec, x, scale, zero_point):
  return _lsq_forward(spec, x, scale, zero_point)[0]


def _lsq_fwd(spec, x, scale, zero_point):
  y, ds, inside, s = _lsq_forward(spec, x, scale, zero_point)
  return y, (ds, inside, s, zero_point)


def _lsq_bwd(spec, res, g):
  ds, inside, s, zero_point = res
  block = spec.granularity.block_shape(g.shape)
  gscale = lsq_grad_scale(spec, g.shape)
  gf = g.astype(jnp.float32)
  dx = jnp.where(inside, g, jnp.where(jnp.isnan(ds), jnp.full_like(g, jnp.nan), jnp.zeros_like(g)))
  dscale = gscale * _tile_sum(gf * ds, block)
  if zero_point is None:
    return dx, dscale, None
  # y = (q - zr) * s with q clipped: outside the range dy/dzr = -s; inside the two zr terms cancel.
  outside = jnp.where(inside, 0.0, -gf)
  dzero = gscale * _tile_sum(outside, block) * s
  return dx, dscale, dzero.astype(zero_point.dtype)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def _check_common(fn, x, spec):
  _check_spec(spec, fn)
  if not spec.qtype.is_int:
    raise ValueError(f"{fn}: LSQ learns integer-grid step sizes; got qtype {spec.qtype.name}. Use an integer qtype "
                     "(jq.INT8, jq.INT4, jq.UINT4, ...) or jquant.qat.fake_quant for float8/NF4.")
  x = _check_x(x, fn)
  return x, gr.scale_shape(spec.granularity, x.shape)


def _check_params(fn, x, scale, zero_point, spec):
  x, expected = _check_common(fn, x, spec)
  if tuple(jnp.shape(scale)) != expected:
    raise ValueError(f"{fn}: scale has shape {tuple(jnp.shape(scale))}, expected {expected} for "
                     f"{spec.granularity} on x{tuple(x.shape)}; initialise it with lsq_init(x, spec).")
  if spec.symmetric and zero_point is not None:
    raise ValueError(f"{fn}: a symmetric spec learns no zero point; pass zero_point=None (or use symmetric=False).")
  if not spec.symmetric and zero_point is None:
    raise ValueError(f"{fn}: an asymmetric spec needs a zero_point of shape {expected} (LSQ+); get one from "
                     "lsq_init(x, spec).")
  if zero_point is not None and tuple(jnp.shape(zero_point)) != expected:
    raise ValueError(f"{fn}: zero_point has shape {tuple(jnp.shape(zero_point))}, expected {expected}.")
  return x


def lsq_fake_quant(x: jax.Array, scale: jax.Array, zero_point: jax.Array | None, spec: QuantSpec) -> jax.Array:
  """Fake quantization with a trainable step size (LSQ) and, for asymmetric specs, zero point (LSQ+).

  Args:
    x: floating array, e.g. a kernel ``(in, out)``.
    scale: float step sizes of shape ``spec.granularity.scale_shape(x.shape)``, trainable; the step is ``|scale|``
      (`lsq_step`), so a sign flip during training keeps the grid; zero is an error (eager) or NaN (traced).
    zero_point: float zero points of the scale shape for asymmetric specs (rounded in the forward pass,
      trainable through a straight-through round), None for symmetric ones.
    spec: an integer-qtype `jq.QuantSpec`.

  Returns:
    The fake-quantized ``x`` (same shape and dtype); it equals
    ``jq.dequantize(jq.quantize(x, spec, scale=lsq_step(scale), zero_point=round(zero_point)))``.

  Raises:
    TypeError: non-floating ``x`` or a non-QuantSpec spec.
    ValueError: a non-integer qtype, wrong scale/zero-point shapes, or a zero point given to a symmetric spec.
  """
  x = _check_params("lsq_fake_quant", x, scale, zero_point, spec)
  scale = jnp.asarray(scale)
  if not isinstance(scale, jax.core.Tracer):
    s = np.asarray(scale, np.float64)
    bad = ~(np.isfinite(s) & (s != 0))
    if bad.any():
      raise ValueError(f"lsq_fake_quant: {int(bad.sum())} step sizes are not finite and non-zero "
                       f"(e.g. {float(s[bad][0])!r}); initialise them with lsq_init(x, spec).")
  if zero_point is not None:
    zero_point = jnp.asarray(zero_point)
  return _lsq(spec, x, lsq_step(scale), zero_point)


def lsq_init(x: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array | None]:
  """Initial ``(scale, zero_point)`` from data.

  Symmetric (LSQ): ``scale = 2 * mean(|x|) / sqrt(qmax)`` per tile, zero point None. Asymmetric (LSQ+): the
  min/max range of each tile (``jq.MinMax`` scale and float zero point).

  Returns:
    float32 arrays of shape ``spec.granularity.scale_shape(x.shape)``.
  """
  x, _ = _check_common("lsq_init", x, spec)
  if not spec.symmetric:
    scale, zp = compute_qparams(x, spec.replace(calibration=MinMax()))
    return scale, zp.astype(jnp.float32)
  block = spec.granularity.block_shape(x.shape)
  mean_abs = jnp.mean(jnp.abs(tiling.to_tiles(x.astype(jnp.float32), block)), axis=-1)
  scale = 2.0 * mean_abs / math.sqrt(spec.qtype.qmax)
  return jnp.where(scale == 0, 1.0, scale), None   # all-zero tile -> 1; NaN/inf tiles stay non-finite
