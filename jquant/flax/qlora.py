"""QLoRA: a frozen NF4 (double-quantized) base weight plus a trainable low-rank adapter, for Linen and NNX.

    y = x @ dequantize(base_kernel) + (alpha / rank) * (x @ lora_a) @ lora_b + base_bias

The base lives outside the trainable params -- Linen: the ``qlora_base`` collection; NNX: `QLoRABase`
variables -- so ``jax.grad`` over ``params`` (Linen) or ``nnx.Param`` (NNX) reaches only ``lora_a``/``lora_b``
and the optimizer cannot touch the base. ``lora_b`` starts at zero, so an un-trained adapter reproduces the
quantized base layer exactly.
"""

from __future__ import annotations

import math

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jquant.core import calibration_methods as cm
from jquant.core import granularity as gr
from jquant.core import qtypes
from jquant.core.checks import real_scalar
from jquant.core.paths import flatten, unflatten
from jquant.core.quantize import dequantize, quantize
from jquant.core.spec import QuantSpec

__all__ = ("NF4_DQ_G64", "QLoRABase", "QLoRADense", "QLoRALinear", "load_qlora_base")

NF4_DQ_G64 = QuantSpec(qtype=qtypes.NF4, granularity=gr.PerGroup(axis=0, size=64), calibration=cm.AbsMax(),
                       double_quant=True)
"""QLoRA's base format: NF4, groups of 64 inputs per output channel, scales double-quantized to int8."""


def _check(rank: int, alpha: float, base_spec, where: str) -> None:
  if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
    raise ValueError(f"{where}: rank={rank!r} must be a positive int, e.g. 8.")
  a = real_scalar(alpha, f"{where}: alpha")   # a string '16' or a bool is a TypeError, not silently coerced
  if not (math.isfinite(a) and a > 0):
    raise ValueError(f"{where}: alpha={alpha!r} must be a finite number > 0, e.g. 16.")
  if not isinstance(base_spec, QuantSpec):
    raise TypeError(f"{where}: base_spec must be a jq.QuantSpec, got {base_spec!r}.")


def _lora(x, a, b, alpha, rank, dtype):
  return (x @ a.astype(dtype)) @ b.astype(dtype) * jnp.asarray(alpha / rank, dtype)


class QLoRADense(nn.Module):
  """Linen Dense with a frozen quantized base and a LoRA adapter.

  Attributes:
    features: output features.
    rank: adapter rank ``r``.
    alpha: adapter scaling numerator (the update is scaled by ``alpha / rank``).
    base_spec: spec of the frozen kernel ``(in, out)``; default NF4, groups of 64, double-quantized scales.
    use_bias: whether the base has a (frozen, float) bias.
    dtype: compute dtype (default bfloat16).
    param_dtype: dtype of the adapter params (default bfloat16).
    kernel_init: initializer of the base kernel when it is not loaded from a trained model.
    lora_init: initializer of ``lora_a`` ``(in, rank)``; ``lora_b`` ``(rank, out)`` starts at zero.
  """

  features: int
  rank: int = 8
  alpha: float = 16.0
  base_spec: QuantSpec = NF4_DQ_G64
  use_bias: bool = True
  dtype: Any = jnp.bfloat16
  param_dtype: Any = jnp.bfloat16
  kernel_init: Any = nn.initializers.lecun_normal()
  lora_init: Any = nn.initializers.he_uniform()

  def __post_init__(self):
    _check(self.rank, self.alpha, self.base_spec, "QLoRADense")
    super().__post_init__()

  @nn.compact
  def __call__(self, x):
    k = x.shape[-1]
    base = self.variable("qlora_base", "kernel",
                         lambda: quantize(self.kernel_init(self.make_rng("params"), (k, self.features), jnp.float32),
                                          self.base_spec))
    a = self.param("lora_a", self.lora_init, (k, self.rank), self.param_dtype)
    b = self.param("lora_b", nn.initializers.zeros_init(), (self.rank, self.features), self.param_dtype)
    x = x.astype(self.dtype)
    w = dequantize(jax.lax.stop_gradient(base.value), dtype=self.dtype)
    y = x @ w + _lora(x, a, b, self.alpha, self.rank, self.dtype)
    if self.use_bias:
      bias = self.variable("qlora_base", "bias", jnp.zeros, (self.features,), jnp.float32)
      y = y + jax.lax.stop_gradient(bias.value).astype(self.dtype)
    return y


def load_qlora_base(init_variables: dict, trained_params: dict, *, spec: QuantSpec | None = None) -> dict:
  """Fills a QLoRA model's variables from a trained float model with the same module names.

  Every ``qlora_base`` entry (a `QLoRADense` at some path) takes the quantized ``kernel`` and the ``bias`` of
  the trained Dense at that path; every other trained param (embeddings, norms, ...) is copied into ``params``
  at its path; the adapters keep their fresh initialization.

  Args:
    init_variables: ``qlora_model.init(...)`` (with ``params`` and ``qlora_base``).
    trained_params: the float model's ``variables["params"]``.
    spec: base spec; defaults to the one each QLoRADense was initialized with.

  Returns:
    New variables ``{"params": ..., "qlora_base": ...}``.

  Raises:
    ValueError: a QLoRA layer whose path has no trained kernel, or shapes that differ.
  """
  flat_params = flatten(trained_params)
  base = flatten(init_variables.get("qlora_base", {}))
  new_base = {}
  for path, leaf in base.items():
    module, name = path.rsplit("/", 1)
    src = flat_params.pop(f"{module}/{name}", None)
    if src is None:
      if name == "bias":
        continue
      raise ValueError(f"load_qlora_base: QLoRA layer {module!r} has no trained {name!r} at that path in the trained "
                       "params; give the QLoRA layers the same names as the Dense layers they replace.")
    if tuple(src.shape) != tuple(leaf.shape):
      raise ValueError(f"load_qlora_base: {module}/{name} has shape {tuple(src.shape)} in the trained params but "
                       f"{tuple(leaf.shape)} in the QLoRA model.")
    if name == "kernel":
      new_base[path] = quantize(jnp.asarray(src, jnp.float32), spec or leaf.spec)
    else:
      new_base[path] = jnp.asarray(src, jnp.float32)
  params = flatten(init_variables["params"])
  for path, v in flat_params.items():
    if path in params:
      if tuple(params[path].shape) != tuple(v.shape):
        raise ValueError(f"load_qlora_base: {path} has shape {tuple(v.shape)} in the trained params but "
                         f"{tuple(params[path].shape)} in the QLoRA model.")
      params[path] = jnp.asarray(v, params[path].dtype)
  out = dict(init_variables)
  out["params"] = unflatten(params)
  out["qlora_base"] = unflatten(new_base)
  return out


class QLoRABase(nnx.Variable):
  """A frozen QLoRA base weight (a `jq.QArray`) or bias; not an ``nnx.Param``, so never trained."""


class QLoRALinear(nnx.Module):
  """NNX Linear with a frozen quantized base and a LoRA adapter (see `QLoRADense`).

  Args:
    in_features, out_features: layer size.
    rank, alpha, base_spec, use_bias, dtype, param_dtype: as in `QLoRADense`.
    kernel: optional trained float kernel ``(in, out)`` to quantize as the base (else initialized randomly).
    bias: optional trained bias ``(out,)``.
    rngs: ``nnx.Rngs`` for the initializers.
  """

  def __init__(self, in_features: int, out_features: int, *, rank: int = 8, alpha: float = 16.0,
               base_spec: QuantSpec = NF4_DQ_G64, use_bias: bool = True, dtype: Any = jnp.bfloat16,
               param_dtype: Any = jnp.bfloat16, kernel=None, bias=None, rngs: nnx.Rngs):
    _check(rank, alpha, base_spec, "QLoRALinear")
    if kernel is None:
      kernel = nn.initializers.lecun_normal()(rngs.params(), (in_features, out_features), jnp.float32)
    if tuple(jnp.shape(kernel)) != (in_features, out_features):
      raise ValueError(f"QLoRALinear: kernel has shape {tuple(jnp.shape(kernel))}, expected "
                       f"{(in_features, out_features)}.")
    self.base_kernel = QLoRABase(quantize(jnp.asarray(kernel, jnp.float32), base_spec))
    self.use_bias = use_bias
    if use_bias:
      b = jnp.zeros((out_features,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
      self.base_bias = QLoRABase(b)
    self.lora_a = nnx.Param(nn.initializers.he_uniform()(rngs.params(), (in_features, rank), param_dtype))
    self.lora_b = nnx.Param(jnp.zeros((rank, out_features), param_dtype))
    self.rank, self.alpha, self.dtype = rank, float(alpha), dtype

  def __call__(self, x):
    x = x.astype(self.dtype)
    w = dequantize(jax.lax.stop_gradient(self.base_kernel.get_value()), dtype=self.dtype)
    y = x @ w + _lora(x, self.lora_a[...], self.lora_b[...], self.alpha, self.rank, self.dtype)
    if self.use_bias:
      y = y + jax.lax.stop_gradient(self.base_bias[...]).astype(self.dtype)
    return y
