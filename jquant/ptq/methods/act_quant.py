"""Activation quantization on top of any weight-only method: W4A8 / W4A4 (QuaRot's setting with rotated models).

    method = jq.ptq.ActQuant(jq.ptq.GPTQ(spec_w4), act_bits=8)
    qparams, report = jq.ptq.quantize_model(model, params, batches, method)    # the weights exactly as GPTQ's
    run = jq.ptq.runtime_model(model, method)                                    # dynamic per-token activations

At run time every quantized linear quantizes its input per token, symmetric (absmax / 127 for 8 bits, / 7 for 4
bits; `jquant.core` PerToken specs). INT8 activations times INT8 per-channel weights take the integer path of
`W8A8Matmul` (`jquant.ops.qdot`); other pairs (int8 or int4 activations with grouped 4/3-bit weights) multiply the
dequantized activation codes with `jquant.ops.qdot` -- the values are exactly those of the integer product, no
int4 x int4 kernel exists yet. Float kernels (an unquantized LM head) keep float inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jquant.core.granularity import PerChannel, PerToken
from jquant.core.qarray import QArray
from jquant.core.qtypes import INT4, INT8
from jquant.core.quantize import dequantize, quantize
from jquant.core.spec import QuantSpec
from jquant.ops import qmatmul
from jquant.ptq.methods.base import check_method
from jquant.ptq.methods.smoothquant import W8A8Matmul

__all__ = ["ActQuant", "ActQuantMatmul"]

_ACT_QTYPES = {8: INT8, 4: INT4}


def _check_bits(bits: Any, what: str) -> None:
  if isinstance(bits, bool) or bits not in _ACT_QTYPES:
    raise ValueError(f"{what}: act_bits must be 8 or 4 (per-token symmetric int8 / int4 activations), got {bits!r}.")


@dataclasses.dataclass(frozen=True)
class ActQuantMatmul:
  """Hashable ``matmul(x, kernel)`` with dynamic per-token ``act_bits`` activations (module docstring)."""

  act_bits: int = 8

  def __post_init__(self):
    _check_bits(self.act_bits, "ActQuantMatmul")

  def __call__(self, x: jax.Array, kernel: Any) -> jax.Array:
    if not isinstance(kernel, QArray):
      return qmatmul(x, kernel)
    g = kernel.spec.granularity
    if self.act_bits == 8 and kernel.qtype == INT8 and kernel.zero_point is None and kernel.g_idx is None \
        and isinstance(g, PerChannel):
      return W8A8Matmul("per_token")(x, kernel)
    spec = QuantSpec(qtype=_ACT_QTYPES[self.act_bits], granularity=PerToken())
    return qmatmul(dequantize(quantize(x, spec), x.dtype), kernel)


@dataclasses.dataclass(frozen=True)
class ActQuant:
  """A weight-only ``method`` (RTN, GPTQ, AWQ, ...) whose runtime also quantizes activations to ``act_bits``.

  Calibration and weights are the inner method's; only ``matmul`` (and the report's name) differ.
  """

  method: Any
  act_bits: int = 8

  def __post_init__(self):
    check_method(self.method)
    _check_bits(self.act_bits, "ActQuant")
    if getattr(self.method, "matmul", None) is not None:
      raise ValueError(f"ActQuant: {self.method.name} already quantizes activations at run time; wrap a weight-only "
                       "method (RTN, GPTQ, AWQ).")

  @property
  def name(self) -> str:
    return f"{self.method.name}+a{self.act_bits}"

  @property
  def bits(self) -> int:
    return self.method.bits

  @property
  def spec(self):
    return getattr(self.method, "spec", None)

  @property
  def float_inputs(self) -> bool:
    return self.method.float_inputs

  @property
  def has_transform(self) -> bool:
    return self.method.has_transform

  @property
  def matmul(self) -> ActQuantMatmul:
    return ActQuantMatmul(self.act_bits)

  def transform(self, block, stats, groups, plan, keep, view_of):
    return self.method.transform(block, stats, groups, plan, keep, view_of)

  def solve(self, w, gram, view=None):
    return self.method.solve(w, gram, view)
