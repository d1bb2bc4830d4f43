"""Fake quantization with a clipped straight-through gradient.

``fake_quant(x, spec)`` returns ``dequantize(quantize(x, spec))`` -- the exact numbers an integer (or float8, or
NF4) model computes with -- in the dtype of ``x``. Its gradient is the clipped straight-through estimator: the
incoming gradient passes unchanged where ``x`` lies inside the representable range of its tile,
``[(qmin - zero_point) * scale, (qmax - zero_point) * scale]`` (``+-fmax * scale`` for float8, ``+-scale`` for
NF4), and is zero outside it.

Scales are dynamic (computed from ``x`` per tile with ``spec.calibration``; no gradient flows into that
computation) or static (given ``scale``/``zero_point``, e.g. from an observer; they get zero gradient -- use
`jquant.qat.lsq_fake_quant` to learn them).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jquant.core import granularity as gr
from jquant.core import tiling
from jquant.core.quantize import dequantize, expanded_params, quantize
from jquant.core.ranges import scale_from_range
from jquant.core.spec import QuantSpec

__all__ = ("fake_quant", "fake_quant_with_range", "numel_per_scale", "representable_range")


def _check_spec(spec, fn: str) -> None:
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"{fn}: spec must be a jq.QuantSpec, got {type(spec).__name__}; "
                    "e.g. jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)).")
  if spec.stochastic_rounding:
    raise ValueError(f"{fn}: spec.stochastic_rounding=True is not supported in fake quantization (the forward must "
                     "be the deterministic inference numerics); use spec.replace(stochastic_rounding=False).")


def _check_x(x, fn: str) -> jax.Array:
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: x has dtype {x.dtype}; fake quantization needs a floating array "
                    "(float32, bfloat16 or float16).")
  if x.ndim == 0:
    raise ValueError(f"{fn}: got a scalar; pass an array of rank >= 1 (reshape with x[None]).")
  return x


def representable_range(scale: jax.Array, zero_point: jax.Array | None, spec: QuantSpec):
  """Per-tile ``(lo, hi)`` that dequantized values of a tile can take (float32, scale shape).

  Integers: ``((qmin - zp) * scale, (qmax - zp) * scale)``; float8: ``+-fmax * scale``; NF4: ``+-scale``.
  """
  qt = spec.qtype
  z = 0.0 if zero_point is None else zero_point.astype(jnp.float32)
  s = scale.astype(jnp.float32)
  return (qt.qmin - z) * s, (qt.qmax - z) * s


def _forward(x: jax.Array, scale, zero_point, spec: QuantSpec):
  """(fake-quantized x, per-element gradient code). The same jq.quantize/jq.dequantize calls convert() makes.

  The code is int8: 1 passes the gradient, 0 clips it, 2 poisons it with NaN -- for a NaN/inf element and for
  every element of a tile whose scale is NaN (a non-finite value in the tile, or a range the format cannot hold;
  their forward values are NaN too), so a non-finite activation can never yield a finite gradient.
  """
  qa = quantize(x, spec, scale=scale, zero_point=zero_point, check_finite_values=False)
  y = dequantize(qa, x.dtype)
  s, z, block = expanded_params(qa)
  lo, hi = representable_range(s, z, spec)
  # Widen by a few float32 ulps: (qmax * (amax / qmax)) can round just below amax, and the element that set a
  # dynamic range must count as inside it.
  slack = 4 * jnp.finfo(jnp.float32).eps
  lo, hi = lo - slack * jnp.abs(lo), hi + slack * jnp.abs(hi)
  xf = x.astype(jnp.float32)

  def code(v, a, b):
    inside = ((v >= a) & (v <= b)).astype(jnp.int8)
    return jnp.where(jnp.isfinite(v) & ~jnp.isnan(a), inside, jnp.int8(2))
  return y, tiling.broadcast_apply(code, xf, block, lo, hi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fake_quant(spec, x, scale, zero_point):
  return _forward(x, scale, zero_point, spec)[0]


def _fake_quant_fwd(spec, x, scale, zero_point):
  y, code = _forward(x, scale, zero_point, spec)
  # The int8 code is the only per-element residual; scale/zero point (tile-sized) only for the shapes of their zeros.
  return y, (code, scale, zero_point)


def _fake_quant_bwd(spec, res, g):
  del spec
  code, scale, zero_point = res
  zeros = lambda a: None if a is None else jnp.zeros_like(a)
  gx = jnp.where(code == 1, g, jnp.where(code == 0, jnp.zeros_like(g), jnp.full_like(g, jnp.nan)))
  return gx, zeros(scale), zeros(zero_point)


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quant(x: jax.Array, spec: QuantSpec, *, scale: jax.Array | None = None,
               zero_point: jax.Array | None = None) -> jax.Array:
  """Quantize-dequantize ``x`` with a clipped straight-through gradient.

  Args:
    x: floating array of any rank >= 1, e.g. a kernel ``(in, out)`` or activations ``(..., features)``.
    spec: the `jq.QuantSpec` (any qtype: integers, float8, NF4; any granularity).
    scale: optional static scale of shape ``spec.granularity.scale_shape(x.shape)``; None computes it from ``x``.
    zero_point: static zero point (asymmetric specs with a static scale), same shape as ``scale``.

  Returns:
    ``jq.dequantize(jq.quantize(x, spec, scale=..., zero_point=...))`` in ``x.dtype``, same shape as ``x``.
    Gradient w.r.t. ``x``: the incoming gradient where ``x`` is inside its tile's representable range, else 0;
    ``scale`` and ``zero_point`` get zero gradient.

  Raises:
    TypeError: non-floating ``x`` or a spec that is not a QuantSpec.
    ValueError: stochastic-rounding specs, scalar ``x``, or a scale/zero point of the wrong shape (or missing).
  """
  _check_spec(spec, "fake_quant")
  x = _check_x(x, "fake_quant")
  expected = gr.scale_shape(spec.granularity, x.shape)
  if scale is None:
    if zero_point is not None:
      raise ValueError("fake_quant: zero_point was given without scale; pass both (static) or neither (dynamic).")
    return _fake_quant(spec, x, None, None)
  scale = jnp.asarray(scale, jnp.float32)
  if tuple(scale.shape) != expected:
    raise ValueError(f"fake_quant: scale has shape {tuple(scale.shape)}, expected {expected} for "
                     f"{spec.granularity} on x{tuple(x.shape)}.")
  if spec.symmetric != (zero_point is None):
    raise ValueError(f"fake_quant: symmetric={spec.symmetric} spec needs zero_point "
                     f"{'None' if spec.symmetric else 'of the scale shape'}, got "
                     f"{None if zero_point is None else jnp.shape(zero_point)}.")
  if zero_point is not None:
    zero_point = jnp.asarray(zero_point, jnp.float32)
    if tuple(zero_point.shape) != expected:
      raise ValueError(f"fake_quant: zero_point has shape {tuple(zero_point.shape)}, expected {expected}.")
  return _fake_quant(spec, x, scale, zero_point)


def fake_quant_with_range(x: jax.Array, lo: jax.Array, hi: jax.Array, spec: QuantSpec) -> jax.Array:
  """Fake-quantizes ``x`` with a static range ``[lo, hi]`` (e.g. an EMA observer's), per tile of the spec.

  ``lo``/``hi`` have the scale shape; for a symmetric spec only ``max(|lo|, |hi|)`` matters. The range gets no
  gradient (it is an observed statistic).
  """
  _check_spec(spec, "fake_quant_with_range")
  lo = jax.lax.stop_gradient(jnp.asarray(lo, jnp.float32))
  hi = jax.lax.stop_gradient(jnp.asarray(hi, jnp.float32))
  if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer):
    if jnp.shape(lo) != jnp.shape(hi):
      raise ValueError(f"fake_quant_with_range: lo {jnp.shape(lo)} and hi {jnp.shape(hi)} must have the same shape.")
    if bool(jnp.any(lo > hi)):
      raise ValueError("fake_quant_with_range: some tiles have lo > hi (an inverted range); pass the observed "
                       "(min, max) in that order.")
  if spec.symmetric:
    hi = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
  scale, zp = scale_from_range(lo, hi, spec.qtype, spec.symmetric)
  return fake_quant(x, spec, scale=scale, zero_point=zp)


def numel_per_scale(spec: QuantSpec, shape) -> int:
  """How many elements of an array of ``shape`` share one scale under ``spec``."""
  return math.prod(spec.granularity.block_shape(tuple(shape)))
