"""Quantization-aware training for Flax Linen.

Three ways in, all through Flax's own injection points (no monkey-patching, no dynamic subclassing):

1. Factories for the layers' hooks, dynamic ranges::

     nn.Dense(4096, dot_general=fake_quant_dot_general(lhs_spec=A8_TOKEN, rhs_spec=W4_G128))

2. Wrapper modules with the same parameter tree as the Flax layer they wrap (``kernel``/``bias``), plus
   learned step sizes (``weight_mode="lsq"``: ``kernel_scale``, ``kernel_zero_point`` beside the kernel) and
   static activation ranges (``act_mode="static"``: an EMA of the batch range in the ``quant_stats``
   collection, updated when ``quant_stats`` is mutable -- training -- and used as is at eval)::

     QuantDense(4096, weight_spec=W4_G128, act_spec=A8_TENSOR, act_mode="static")

   They wrap ``nn.Dense``/``nn.DenseGeneral``/``nn.Einsum``/``nn.Conv`` with ``nn.share_scope`` and quantize in
   its ``promote_dtype`` hook: the weight in its parameter dtype (float32) before the cast to ``dtype``, the
   activation after it. Weights converted by `jquant.qat.convert` (QArray leaves) are dequantized instead,
   giving the same numbers as the fake-quant eval.

3. ``fake_quant_model(model, cfg)``: a `jq.QuantConfig` applied to an existing, unmodified model by intercepting
   the ``__call__`` of its Dense/DenseGeneral/Einsum/Conv layers (``nn.intercept_methods``). (Its old name
   ``quantize_model`` is a deprecated alias for one release: ``jq.ptq.quantize_model`` is the PTQ pipeline.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as linen_dtypes
from flax.linen import initializers

from jquant import rules
from jquant.core.deprecation import deprecated_alias
from jquant.core.paths import join
from jquant.core.qarray import QArray
from jquant.core.spec import QuantSpec
from jquant.flax import _quant
from jquant.flax._quant import fake_quant_conv, fake_quant_dot_general, fake_quant_einsum
from jquant.qat.lsq import lsq_init

__all__ = ("QuantConv", "QuantDense", "QuantDenseGeneral", "QuantEinsum", "QuantizedModel", "fake_quant_conv",
           "fake_quant_dot_general", "fake_quant_einsum", "fake_quant_model")

_default_kernel_init = initializers.lecun_normal()
_SHARED_FIELDS = ("use_bias", "dtype", "param_dtype", "precision", "kernel_init", "bias_init")


class _QuantWrapper(nn.Module):
  """Shares its scope with a Flax layer whose ``promote_dtype`` hook quantizes the operands."""

  _: dataclasses.KW_ONLY
  weight_spec: QuantSpec | None = None
  act_spec: QuantSpec | None = None
  weight_mode: str = "dynamic"
  act_mode: str = "dynamic"
  ema_decay: float = 0.99
  # Forwarded to the wrapped layer as they are (keyword-only here).
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = _default_kernel_init
  bias_init: Any = initializers.zeros_init()

  _layer_cls: ClassVar[type]                # the Flax layer this wraps
  _layer_fields: ClassVar[tuple[str, ...]]  # its own fields forwarded to it (besides _SHARED_FIELDS)

  def __post_init__(self):
    _quant.check_options(self.weight_spec, self.act_spec, self.weight_mode, self.act_mode, self.ema_decay,
                         type(self).__name__)
    super().__post_init__()

  def setup(self):
    kwargs = {name: getattr(self, name) for name in (*self._layer_fields, *_SHARED_FIELDS)}
    self.layer = self._layer_cls(**kwargs, promote_dtype=self._promote)
    nn.share_scope(self, self.layer)

  @nn.compact
  def __call__(self, *args, **kwargs):
    return self.layer(*args, **kwargs)

  def _promote(self, inputs, kernel, bias=None, *, dtype=None, inexact=True):
    kernel = _quant.quantize_weight(kernel, self.weight_spec, self.weight_mode, self._lsq_params)
    inputs, kernel, bias = linen_dtypes.promote_dtype(inputs, kernel, bias, dtype=dtype, inexact=inexact)
    return self._quant_act(inputs), kernel, bias

  def _lsq_params(self, kernel):
    spec = self.weight_spec
    scale = self.param("kernel_scale", lambda _: lsq_init(kernel, spec)[0])
    zero_point = None if spec.symmetric else self.param("kernel_zero_point", lambda _: lsq_init(kernel, spec)[1])
    return scale, zero_point

  def _quant_act(self, x):
    return _quant.quantize_act(x, self.act_spec, self.act_mode, lambda shape: self._tracked_range(x, shape))

  def _tracked_range(self, x, shape):
    """The EMA (lo, hi, count) in ``quant_stats``, moved by this batch when that collection is mutable."""
    lo = self.variable("quant_stats", "act_lo", jnp.zeros, shape, jnp.float32)
    hi = self.variable("quant_stats", "act_hi", jnp.zeros, shape, jnp.float32)
    count = self.variable("quant_stats", "act_count", jnp.zeros, (), jnp.int32)
    if self.is_mutable_collection("quant_stats") and not self.is_initializing():
      decay = _quant.ema_decay_of(self.act_spec, self.ema_decay)
      lo.value, hi.value, count.value = _quant.ema_update(lo.value, hi.value, count.value, x, self.act_spec, decay)
    return lo.value, hi.value, count.value


class QuantDense(_QuantWrapper):
  """``nn.Dense`` with quantization-aware training; same params (``kernel`` (in, out), ``bias``).

  Attributes:
    features, use_bias, dtype, param_dtype, precision, kernel_init, bias_init: as in ``nn.Dense``.
    weight_spec: spec of the kernel ``(in, out)``, e.g. ``PerChannel(axis=-1)`` or ``PerGroup(axis=0, size=128)``.
    act_spec: spec of the input ``(..., in)``, e.g. ``PerToken()`` (dynamic) or ``PerTensor()``.
    weight_mode: ``"dynamic"`` (range from the weight each step) or ``"lsq"`` (learned ``kernel_scale``).
    act_mode: ``"dynamic"`` or ``"static"`` (EMA range in ``quant_stats``).
    ema_decay: EMA decay for static ranges (``spec.calibration=jq.EMA(decay)`` overrides it).
  """

  features: int

  _layer_cls = nn.Dense
  _layer_fields = ("features",)


class QuantDenseGeneral(_QuantWrapper):
  """``nn.DenseGeneral`` with quantization-aware training (kernel shape ``(*in_axes, *features)``)."""

  features: int | tuple[int, ...]
  axis: int | tuple[int, ...] = -1
  batch_dims: tuple[int, ...] = ()

  _layer_cls = nn.DenseGeneral
  _layer_fields = ("features", "axis", "batch_dims")


class QuantEinsum(_QuantWrapper):
  """``nn.Einsum`` with quantization-aware training (kernel of shape ``shape``; specs use its axes)."""

  shape: tuple[int, ...]
  einsum_str: str | None = None

  _layer_cls = nn.Einsum
  _layer_fields = ("shape", "einsum_str")


class QuantConv(_QuantWrapper):
  """``nn.Conv`` with quantization-aware training (kernel ``(*window, in // groups, out)``; input NHWC-style)."""

  features: int
  kernel_size: int | tuple[int, ...]
  strides: Any = 1
  padding: Any = "SAME"
  input_dilation: Any = 1
  kernel_dilation: Any = 1
  feature_group_count: int = 1

  _layer_cls = nn.Conv
  _layer_fields = ("features", "kernel_size", "strides", "padding", "input_dilation", "kernel_dilation",
                   "feature_group_count")


# ---------------------------------------------------------------------------------------------------------------
# A QuantConfig applied to an unmodified model.

_INTERCEPTED = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)


@dataclasses.dataclass(frozen=True)
class _PromoteHook:
  """A Linen ``promote_dtype`` that fake-quantizes the kernel (before the cast) and the input (after it)."""

  weight_spec: QuantSpec | None
  act_spec: QuantSpec | None

  def __call__(self, inputs, kernel, bias=None, *, dtype=None, inexact=True):
    kernel = _quant.quantize_weight(kernel, self.weight_spec, "dynamic", None)
    inputs, kernel, bias = linen_dtypes.promote_dtype(inputs, kernel, bias, dtype=dtype, inexact=inexact)
    if self.act_spec is not None:
      inputs = _quant.fake_quant(inputs, self.act_spec)
    return inputs, kernel, bias


def _rule_spec(cfg, path: str, ndim: int) -> QuantSpec | None:
  if cfg.skipped_by(path) is not None:
    return None
  found = cfg.match(path)
  if found is None or found[1].spec is None:
    return None
  return rules.spec_for_leaf(found[1], ndim)[0]


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
  """``model`` whose Dense/DenseGeneral/Einsum/Conv layers run fake-quantized where ``cfg`` matches their kernel.

  Kernel paths are '/'-joined module names plus ``kernel``, as in ``variables["params"]`` (e.g.
  ``"Block_0/Dense_1/kernel"``), so the same ``cfg`` drives ``jq.qat.convert(variables["params"], cfg)``;
  the converted params (QArray kernels) run through ``apply`` unchanged. ``init``/``apply`` take the same
  arguments as the wrapped model's.

  Attributes:
    model: the unmodified Linen module.
    cfg: a ``jq.QuantConfig`` (rules over kernel paths, first match wins, skip patterns first).
    act_spec: optional dynamic activation spec for the inputs of every matched layer.
  """

  model: nn.Module
  cfg: Any
  act_spec: QuantSpec | None = None

  def __post_init__(self):
    if not isinstance(self.model, nn.Module):
      raise TypeError(f"fake_quant_model: model must be a flax.linen Module, got {type(self.model).__name__}.")
    if not (callable(getattr(self.cfg, "match", None)) and callable(getattr(self.cfg, "skipped_by", None))):
      raise TypeError(f"fake_quant_model: cfg must be a jq.QuantConfig, got {type(self.cfg).__name__}.")
    if self.act_spec is not None and not isinstance(self.act_spec, QuantSpec):
      raise TypeError(f"fake_quant_model: act_spec must be a jq.QuantSpec or None, got {self.act_spec!r}.")

  def _interceptor(self, next_fun, args, kwargs, context):
    mod = context.module
    if (context.method_name != "__call__" or not isinstance(mod, _INTERCEPTED)
        or isinstance(mod.promote_dtype, _PromoteHook)):
      return next_fun(*args, **kwargs)
    initializing = not mod.has_variable("params", "kernel")
    out = next_fun(*args, **kwargs) if initializing else None   # creates the params
    kernel = mod.get_variable("params", "kernel")
    path = join((*mod.path, "kernel"))
    spec = None if isinstance(kernel, QArray) else _rule_spec(self.cfg, path, jnp.ndim(kernel))
    if spec is None and not isinstance(kernel, QArray):
      return out if initializing else next_fun(*args, **kwargs)
    quantized = mod.clone(parent=None, promote_dtype=_PromoteHook(spec, self.act_spec))
    return quantized.apply({"params": mod.variables["params"]}, *args, **kwargs)

  def init(self, *args, **kwargs):
    with nn.intercept_methods(self._interceptor):
      return self.model.init(*args, **kwargs)

  def apply(self, *args, **kwargs):
    with nn.intercept_methods(self._interceptor):
      return self.model.apply(*args, **kwargs)

  def weight_specs(self, variables, *args, **kwargs) -> dict[str, QuantSpec]:
    """``{kernel path: spec}`` of every layer the config quantizes (traced abstractly, nothing computed)."""
    found: dict[str, QuantSpec] = {}

    def record(next_fun, a, kw, context):
      mod = context.module
      if context.method_name == "__call__" and isinstance(mod, _INTERCEPTED) and mod.has_variable("params",
                                                                                                "kernel"):
        kernel = mod.get_variable("params", "kernel")
        path = join((*mod.path, "kernel"))
        spec = None if isinstance(kernel, QArray) else _rule_spec(self.cfg, path, jnp.ndim(kernel))
        if spec is not None:
          found[path] = spec
      return next_fun(*a, **kw)

    with nn.intercept_methods(record):
      jax.eval_shape(lambda v, a, kw: self.model.apply(v, *a, **kw), variables, args, kwargs)
    return found


def fake_quant_model(model: nn.Module, cfg, *, act_spec: QuantSpec | None = None) -> QuantizedModel:
  """Applies a `jq.QuantConfig` to an unmodified Linen model for quantization-aware training.

  Example:
    >>> qmodel = fake_quant_model(model, jq.QuantConfig(rules=[jq.QuantRule(r".*/kernel", W4)], skip=[r".*head.*"]))
    >>> variables = qmodel.init(key, x)
    >>> loss = lambda p: xent(qmodel.apply({"params": p}, x), y)       # fake-quant forward, clipped-STE grads
    >>> int_params = jq.qat.convert(variables["params"], cfg)          # QArray kernels, same numerics
    >>> logits = qmodel.apply({"params": int_params}, x)
  """
  return QuantizedModel(model, cfg, act_spec)


#: Deprecated (one release): the old name of `fake_quant_model`, which clashed with ``jq.ptq.quantize_model``.
quantize_model = deprecated_alias(fake_quant_model, "jq.flax.linen.quantize_model", "jq.flax.linen.fake_quant_model")
