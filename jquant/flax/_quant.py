"""Framework-neutral pieces shared by the Linen and NNX wrappers: options, operand fake-quant, EMA ranges.

Weights are fake-quantized in their parameter dtype *before* Flax casts them to the compute dtype, so that
``jquant.qat.convert`` (which quantizes the stored float32 weights) reproduces the trained numerics exactly.
Activations are fake-quantized after the cast, in the compute dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jquant.core import granularity as gr
from jquant.core import tiling
from jquant.core.calibration_methods import EMA
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize
from jquant.core.spec import QuantSpec
from jquant.qat.fake_quant import fake_quant, fake_quant_with_range
from jquant.qat.lsq import lsq_fake_quant

WEIGHT_MODES = ("dynamic", "lsq")
ACT_MODES = ("dynamic", "static")


def check_options(weight_spec, act_spec, weight_mode: str, act_mode: str, ema_decay: float, where: str) -> None:
  """Validates the quantization options every wrapper takes (raises TypeError/ValueError)."""
  for name, spec in (("weight_spec", weight_spec), ("act_spec", act_spec)):
    if spec is not None and not isinstance(spec, QuantSpec):
      raise TypeError(f"{where}: {name} must be a jq.QuantSpec or None, got {spec!r}.")
  if weight_mode not in WEIGHT_MODES:
    raise ValueError(f"{where}: weight_mode={weight_mode!r}; expected one of {WEIGHT_MODES}.")
  if act_mode not in ACT_MODES:
    raise ValueError(f"{where}: act_mode={act_mode!r}; expected one of {ACT_MODES}.")
  if weight_mode == "lsq" and weight_spec is not None and not weight_spec.qtype.is_int:
    raise ValueError(f"{where}: weight_mode='lsq' learns integer step sizes; {weight_spec.qtype.name} is not an "
                     "integer qtype. Use weight_mode='dynamic' for float8/NF4.")
  if act_mode == "static" and act_spec is not None and not isinstance(act_spec.granularity,
                                                                     (gr.PerTensor, gr.PerChannel)):
    raise ValueError(f"{where}: act_mode='static' keeps one range per tensor or per feature, so act_spec needs "
                     f"PerTensor() or PerChannel(axis=-1); got {act_spec.granularity}. Use act_mode='dynamic' "
                     "for PerToken.")
  if not 0.0 <= float(ema_decay) < 1.0:
    raise ValueError(f"{where}: ema_decay={ema_decay} must be in [0, 1), e.g. 0.99.")


def quantize_weight(kernel, spec: QuantSpec | None, mode: str, lsq_params: Callable[[jax.Array], tuple] | None):
  """The weight the layer computes with: converted QArray -> dequantized; else fake-quant (dynamic or LSQ)."""
  if isinstance(kernel, QArray):
    return dequantize(kernel)
  if spec is None:
    return kernel
  if mode == "dynamic":
    return fake_quant(kernel, spec)
  scale, zero_point = lsq_params(kernel)
  return lsq_fake_quant(kernel, scale, zero_point, spec)


def batch_range(x: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
  """Per-scale-tile (lo, hi) of ``x`` in float32 (symmetric: -absmax, absmax)."""
  block = spec.granularity.block_shape(x.shape)
  t = tiling.to_tiles(lax.stop_gradient(x).astype(jnp.float32), block)
  if spec.symmetric:
    hi = jnp.max(jnp.abs(t), axis=-1)
    return -hi, hi
  return jnp.min(t, axis=-1), jnp.max(t, axis=-1)


def ema_decay_of(spec: QuantSpec, default: float) -> float:
  return spec.calibration.decay if isinstance(spec.calibration, EMA) else default


def ema_update(lo, hi, count, x, spec: QuantSpec, decay: float):
  """One EMA observer step: the first batch sets the range, later ones move it by ``1 - decay``."""
  b_lo, b_hi = batch_range(x, spec)
  first = count == 0
  new_lo = jnp.where(first, b_lo, decay * lo + (1.0 - decay) * b_lo)
  new_hi = jnp.where(first, b_hi, decay * hi + (1.0 - decay) * b_hi)
  return new_lo, new_hi, count + 1


def quantize_act_static(x, lo, hi, count, spec: QuantSpec):
  """Fake-quantizes with the tracked range (the batch's own range while nothing has been observed yet)."""
  b_lo, b_hi = batch_range(x, spec)
  seen = count > 0
  return fake_quant_with_range(x, jnp.where(seen, lo, b_lo), jnp.where(seen, hi, b_hi), spec)


def stat_shape(x_shape, spec: QuantSpec) -> tuple[int, ...]:
  return gr.scale_shape(spec.granularity, tuple(x_shape))


def quantize_act(x, spec: QuantSpec | None, mode: str, tracked_range: Callable[[tuple[int, ...]], tuple]):
  """The activation the layer computes with: ``x`` (no spec), dynamic fake-quant, or static fake-quant with the
  ``(lo, hi, count)`` that ``tracked_range(stat shape)`` returns (the wrapper's EMA state, updated when training)."""
  if spec is None:
    return x
  if mode == "dynamic":
    return fake_quant(x, spec)
  lo, hi, count = tracked_range(stat_shape(x.shape, spec))
  return quantize_act_static(x, lo, hi, count, spec)


@dataclasses.dataclass(frozen=True)
class FakeQuantDotGeneral:
  """A drop-in ``lax.dot_general`` that fake-quantizes its operands with dynamic ranges.

  Pass it where Flax takes ``dot_general=`` (``nn.Dense``, ``nn.DenseGeneral``, ``nnx.Linear``,
  ``nnx.LinearGeneral``). The operand specs use the operands' own axes: for a Dense, ``lhs`` is
  ``(..., in)`` and ``rhs`` the kernel ``(in, out)``.
  """

  lhs_spec: QuantSpec | None = None
  rhs_spec: QuantSpec | None = None

  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    if self.lhs_spec is not None:
      lhs = fake_quant(lhs, self.lhs_spec)
    if self.rhs_spec is not None:
      rhs = fake_quant(rhs, self.rhs_spec)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)


@dataclasses.dataclass(frozen=True)
class FakeQuantConv:
  """A drop-in ``lax.conv_general_dilated`` (Flax ``conv_general_dilated=``) with fake-quantized operands."""

  lhs_spec: QuantSpec | None = None
  rhs_spec: QuantSpec | None = None

  def __call__(self, lhs, rhs, *args, **kwargs):
    if self.lhs_spec is not None:
      lhs = fake_quant(lhs, self.lhs_spec)
    if self.rhs_spec is not None:
      rhs = fake_quant(rhs, self.rhs_spec)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class FakeQuantEinsum:
  """A drop-in ``jnp.einsum`` for two operands (NNX ``einsum_op=``) with fake-quantized operands."""

  lhs_spec: QuantSpec | None = None
  rhs_spec: QuantSpec | None = None

  def __call__(self, subscripts, lhs, rhs, **kwargs):
    if self.lhs_spec is not None:
      lhs = fake_quant(lhs, self.lhs_spec)
    if self.rhs_spec is not None:
      rhs = fake_quant(rhs, self.rhs_spec)
    return jnp.einsum(subscripts, lhs, rhs, **kwargs)


def _check_factory(lhs_spec, rhs_spec, where):
  check_options(rhs_spec, lhs_spec, "dynamic", "dynamic", 0.0, where)


def fake_quant_dot_general(lhs_spec: QuantSpec | None = None, rhs_spec: QuantSpec | None = None
                           ) -> FakeQuantDotGeneral:
  """``nn.Dense(..., dot_general=fake_quant_dot_general(lhs_spec=A8_TOKEN, rhs_spec=W4_G128))``.

  Dynamic ranges (computed per call). Note that the kernel arrives already cast to the layer's ``dtype``; for
  bit-exact conversion of bfloat16/float16 layers use the `QuantDense`-style wrappers, which quantize the
  float32 parameter.
  """
  _check_factory(lhs_spec, rhs_spec, "fake_quant_dot_general")
  return FakeQuantDotGeneral(lhs_spec, rhs_spec)


def fake_quant_conv(lhs_spec: QuantSpec | None = None, rhs_spec: QuantSpec | None = None) -> FakeQuantConv:
  """``nn.Conv(..., conv_general_dilated=fake_quant_conv(rhs_spec=W8))`` (kernel ``(*window, in, out)``)."""
  _check_factory(lhs_spec, rhs_spec, "fake_quant_conv")
  return FakeQuantConv(lhs_spec, rhs_spec)


def fake_quant_einsum(lhs_spec: QuantSpec | None = None, rhs_spec: QuantSpec | None = None) -> FakeQuantEinsum:
  """``nnx.Einsum(..., einsum_op=fake_quant_einsum(rhs_spec=W8))``."""
  _check_factory(lhs_spec, rhs_spec, "fake_quant_einsum")
  return FakeQuantEinsum(lhs_spec, rhs_spec)


def cast_like_flax(promote: Callable, inputs, kernel, bias, dtype, *, variadic: bool) -> tuple[Any, Any, Any]:
  """Calls Flax's own promote function (Linen's is variadic, NNX's takes a tuple)."""
  if variadic:
    return tuple(promote(inputs, kernel, bias, dtype=dtype))
  return tuple(promote((inputs, kernel, bias), dtype=dtype))
