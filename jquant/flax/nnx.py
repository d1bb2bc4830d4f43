"""Quantization-aware training for Flax NNX: ``QuantLinear``, ``QuantEinsum``, ``QuantConv``.

Each is the NNX layer itself (same ``kernel``/``bias`` params, same constructor) with quantization options; the
operands are quantized in the layer's own ``promote_dtype`` hook -- the weight in its parameter dtype before the
cast to ``dtype``, the activation after it:

    layer = QuantLinear(512, 256, weight_spec=W4_G128, act_spec=A8_TENSOR, act_mode="static", rngs=rngs)

``weight_mode="lsq"`` adds learned ``kernel_scale`` (and ``kernel_zero_point``) params; ``act_mode="static"``
tracks an EMA of the input range in `QuantStat` variables, updated while ``use_running_average`` is False
(``model.train()``) and used as is after ``model.eval()``. `convert_model` turns a trained model's kernels into
integer QArrays in place; the converted layers compute with the dequantized kernels, i.e. exactly the numbers
of the fake-quant eval.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from jquant.core import granularity as gr
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize, quantize
from jquant.flax import _quant
from jquant.flax._quant import fake_quant_conv, fake_quant_dot_general, fake_quant_einsum
from jquant.qat.lsq import lsq_init, lsq_quantize

__all__ = ("QuantConv", "QuantEinsum", "QuantLinear", "QuantStat", "convert_model", "fake_quant_conv",
           "fake_quant_dot_general", "fake_quant_einsum")


class QuantStat(nnx.Variable):
  """Observed activation-range statistics (not trained by the optimizer)."""


class _QuantMixin:
  """Quantization state and the per-call ``promote_dtype`` hook shared by the three layers."""

  def _init_quant(self, weight_spec, act_spec, weight_mode, act_mode, ema_decay, act_features, where):
    _quant.check_options(weight_spec, act_spec, weight_mode, act_mode, ema_decay, where)
    self.weight_spec = weight_spec
    self.act_spec = act_spec
    self.weight_mode = weight_mode
    self.act_mode = act_mode
    self.ema_decay = ema_decay
    self.use_running_average = False
    self._kernel_is_dequantized = False
    if weight_spec is not None and weight_mode == "lsq":
      scale, zero_point = lsq_init(self.kernel[...], weight_spec)
      self.kernel_scale = nnx.Param(scale)
      if zero_point is not None:
        self.kernel_zero_point = nnx.Param(zero_point)
    if act_spec is not None and act_mode == "static":
      per_feature = isinstance(act_spec.granularity, gr.PerChannel)
      if per_feature and (act_spec.granularity.axis != -1 or act_features is None):
        raise ValueError(f"{where}: a static per-channel activation range needs PerChannel(axis=-1) over the input "
                         f"features; got {act_spec.granularity}. Use PerTensor() or act_mode='dynamic'.")
      n = act_features if per_feature else 1
      self.act_lo = QuantStat(jnp.zeros((n,), jnp.float32))
      self.act_hi = QuantStat(jnp.zeros((n,), jnp.float32))
      self.act_count = QuantStat(jnp.zeros((), jnp.int32))

  def _lsq_params(self, kernel):
    zp = getattr(self, "kernel_zero_point", None)
    return self.kernel_scale[...], None if zp is None else zp[...]

  def _quant_act(self, x):
    return _quant.quantize_act(x, self.act_spec, self.act_mode, lambda shape: self._tracked_range(x, shape))

  def _tracked_range(self, x, shape):
    """The EMA (lo, hi, count) state, moved by this batch unless ``use_running_average``."""
    if not self.use_running_average:
      decay = _quant.ema_decay_of(self.act_spec, self.ema_decay)
      lo, hi, count = _quant.ema_update(self.act_lo[...].reshape(shape), self.act_hi[...].reshape(shape),
                                        self.act_count[...], x, self.act_spec, decay)
      self.act_lo[...] = lo.reshape(-1)
      self.act_hi[...] = hi.reshape(-1)
      self.act_count[...] = count
    return self.act_lo[...].reshape(shape), self.act_hi[...].reshape(shape), self.act_count[...]

  def _promote(self, args, /, *, dtype=None, inexact=True):
    inputs, kernel, bias = args
    if not self._kernel_is_dequantized:
      kernel = _quant.quantize_weight(kernel, self.weight_spec, self.weight_mode, self._lsq_params)
    inputs, kernel, bias = nnx_dtypes.promote_dtype((inputs, kernel, bias), dtype=dtype, inexact=inexact)
    return self._quant_act(inputs), kernel, bias

  def _quant_call(self, call, *args, **kwargs):
    saved_promote = self.promote_dtype
    qkernel = self.kernel.get_value()
    converted = isinstance(qkernel, QArray)
    self.promote_dtype = self._promote
    self._kernel_is_dequantized = converted
    if converted:       # the Flax layer indexes its kernel; hand it the dequantized weights for this call
      self.kernel.set_value(dequantize(qkernel))
    try:
      return call(*args, **kwargs)
    finally:
      self.promote_dtype = saved_promote
      self._kernel_is_dequantized = False
      if converted:
        self.kernel.set_value(qkernel)


def _quant_kwargs(kwargs):
  names = ("weight_spec", "act_spec", "weight_mode", "act_mode", "ema_decay")
  defaults = (None, None, "dynamic", "dynamic", 0.99)
  return [kwargs.pop(n, d) for n, d in zip(names, defaults)]


class QuantLinear(_QuantMixin, nnx.Linear):
  """``nnx.Linear(in_features, out_features, ...)`` plus ``weight_spec``, ``act_spec``, ``weight_mode``
  (``"dynamic"``/``"lsq"``), ``act_mode`` (``"dynamic"``/``"static"``), ``ema_decay`` keyword options.
  Specs use the kernel's ``(in, out)`` and the input's ``(..., in)`` axes."""

  def __init__(self, in_features: int, out_features: int, **kwargs: Any):
    quant = _quant_kwargs(kwargs)
    super().__init__(in_features, out_features, **kwargs)
    self._init_quant(*quant, act_features=in_features, where="QuantLinear")

  def __call__(self, inputs, **kwargs):
    return self._quant_call(super().__call__, inputs, **kwargs)


class QuantEinsum(_QuantMixin, nnx.Einsum):
  """``nnx.Einsum(einsum_str, kernel_shape, ...)`` with the same quantization options as `QuantLinear`
  (static activation ranges: PerTensor only)."""

  def __init__(self, einsum_str: str, kernel_shape, bias_shape=None, **kwargs: Any):
    quant = _quant_kwargs(kwargs)
    super().__init__(einsum_str, kernel_shape, bias_shape, **kwargs)
    self._init_quant(*quant, act_features=None, where="QuantEinsum")

  def __call__(self, inputs, einsum_str=None, **kwargs):
    return self._quant_call(super().__call__, inputs, einsum_str, **kwargs)


class QuantConv(_QuantMixin, nnx.Conv):
  """``nnx.Conv(in_features, out_features, kernel_size, ...)`` with the same quantization options as
  `QuantLinear`; the kernel is ``(*window, in // groups, out)``, the input ``(..., *spatial, in)``."""

  def __init__(self, in_features: int, out_features: int, kernel_size, **kwargs: Any):
    quant = _quant_kwargs(kwargs)
    super().__init__(in_features, out_features, kernel_size, **kwargs)
    self._init_quant(*quant, act_features=in_features, where="QuantConv")

  def __call__(self, inputs, **kwargs):
    return self._quant_call(super().__call__, inputs, **kwargs)


def convert_model(model: nnx.Module) -> nnx.Module:
  """Replaces, in place, every fake-quantized kernel of ``model`` by its integer `jq.QArray`.

  Dynamic weights become ``jq.quantize(kernel, weight_spec)``; LSQ weights use their learned scale and rounded
  zero point, and the ``kernel_scale``/``kernel_zero_point`` params are removed. Activation quantization
  (dynamic or static ranges) is unchanged. Returns ``model``.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"convert_model: expected an nnx.Module, got {type(model).__name__}.")
  for _, m in nnx.iter_modules(model):
    if not isinstance(m, _QuantMixin) or m.weight_spec is None:
      continue
    kernel = m.kernel.get_value()
    if isinstance(kernel, QArray):
      continue
    spec = m.weight_spec
    if m.weight_mode == "lsq":
      zp = getattr(m, "kernel_zero_point", None)
      qa = lsq_quantize(kernel, m.kernel_scale[...], None if zp is None else zp[...], spec)
      del m.kernel_scale
      if zp is not None:
        del m.kernel_zero_point
      m.weight_mode = "dynamic"
    else:
      qa = quantize(kernel, spec)
    m.kernel = nnx.Param(qa)
  return model


