"""Activation quantization on top of any weight-only method: W4A8 / W4A4 (QuaRot's setting with rotated models).

    method = jq.ptq.ActQuant(jq.ptq.GPTQ(spec_w4), act_bits=8)
    qparams, report = jq.ptq.quantize_model(model, params, batches, method)    # the weights exactly as GPTQ's
    run = jq.ptq.runtime_model(model, method)                                    # dynamic per-token activations

At run time every quantized linear quantizes its input per token, symmetric (absmax / 127 for 8 bits, / 7 for 4
bits; `jquant.core` PerToken specs), or with ``act_format`` in a microscaling format along the features (dynamic,
the format's own scale rule per block: MXFP8 E4M3 / MXFP4 per 32 with E8M0 scales, NVFP4 per 16 with E4M3 scales
and its float32 second-level scale taken per token, so a row's codes never depend on the other rows of a batch):
W8A8 MXFP8 and W4A4 MXFP4 / NVFP4 with weights in the same format (``--format F --act-format F`` on the CLI). INT8 activations times INT8 per-channel weights take the integer path of
`W8A8Matmul` (`jquant.ops.qdot`); other pairs (int8 or int4 activations with grouped 4/3-bit weights) multiply the
dequantized activation codes with `jquant.ops.qdot` -- the values are exactly those of the integer product, no
int4 x int4 kernel exists yet. Float kernels (an unquantized LM head) keep float inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jquant.core.granularity import PerChannel, PerGroup, PerToken
from jquant.core.qarray import QArray
from jquant.core.qtypes import INT4, INT8, MXFP4, MXFP8_E4M3, NVFP4
from jquant.core.quantize import dequantize, quantize
from jquant.core.spec import QuantSpec
from jquant.ops import qmatmul
from jquant.ptq.methods.base import check_method
from jquant.ptq.methods.smoothquant import W8A8Matmul

__all__ = ["ActQuant", "ActQuantMatmul", "MX_FORMATS"]

_ACT_QTYPES = {8: INT8, 4: INT4}
MX_FORMATS = {"mxfp8": MXFP8_E4M3, "mxfp4": MXFP4, "nvfp4": NVFP4}    # the short names the CLI's --format uses


def _check_bits(bits: Any, what: str) -> None:
  if isinstance(bits, bool) or bits not in _ACT_QTYPES:
    raise ValueError(f"{what}: act_bits must be 8 or 4 (per-token symmetric int8 / int4 activations), got {bits!r}.")


def _check_format(obj) -> None:
  """Validates ``act_format`` / ``act_bits`` of an ActQuant(Matmul); a format fixes the bits (None: the format's)."""
  what, fmt = type(obj).__name__, obj.act_format
  if fmt != "int" and fmt not in MX_FORMATS:
    raise ValueError(f"{what}: act_format must be 'int' or one of {tuple(MX_FORMATS)}, got {fmt!r}.")
  if obj.act_bits is None:
    object.__setattr__(obj, "act_bits", 8 if fmt == "int" else MX_FORMATS[fmt].bits)
  _check_bits(obj.act_bits, what)
  if fmt != "int" and obj.act_bits != MX_FORMATS[fmt].bits:
    raise ValueError(f"{what}: {fmt} activations have {MX_FORMATS[fmt].bits} bits, got act_bits={obj.act_bits}; "
                     "leave act_bits out with act_format.")


def act_spec(x: jax.Array, act_format: str, act_bits: int) -> QuantSpec:
  """The dynamic activation spec for ``x`` (.., K): per token (int), or the format's blocks along K (MX)."""
  if act_format == "int":
    return QuantSpec(qtype=_ACT_QTYPES[act_bits], granularity=PerToken())
  qt = MX_FORMATS[act_format]
  if x.shape[-1] % qt.block_size:
    raise ValueError(f"{act_format} activations need the input features ({x.shape[-1]}) to be a multiple of "
                     f"{qt.block_size} (one scale per block); quantize this model's activations with act_format='int'.")
  return QuantSpec(qtype=qt, granularity=PerGroup(axis=-1, size=qt.block_size, batch_axes=tuple(range(x.ndim - 1))))


@dataclasses.dataclass(frozen=True)
class ActQuantMatmul:
  """Hashable ``matmul(x, kernel)`` with dynamic per-token ``act_bits`` activations, or ``act_format``
  microscaling ones (module docstring)."""

  act_bits: int | None = None
  act_format: str = "int"

  def __post_init__(self):
    _check_format(self)

  def __call__(self, x: jax.Array, kernel: Any) -> jax.Array:
    if not isinstance(kernel, QArray):
      return qmatmul(x, kernel)
    g = kernel.spec.granularity
    if self.act_format == "int" and self.act_bits == 8 and kernel.qtype == INT8 and kernel.zero_point is None \
        and kernel.g_idx is None and isinstance(g, PerChannel):
      return W8A8Matmul("per_token")(x, kernel)
    return qmatmul(dequantize(quantize(x, act_spec(x, self.act_format, self.act_bits)), x.dtype), kernel)


@dataclasses.dataclass(frozen=True)
class ActQuant:
  """A weight-only ``method`` (RTN, GPTQ, AWQ, ...) whose runtime also quantizes activations to ``act_bits``.

  Calibration and weights are the inner method's; only ``matmul`` (and the report's name) differ.
  """

  method: Any
  act_bits: int | None = None
  act_format: str = "int"

  def __post_init__(self):
    check_method(self.method)
    _check_format(self)
    if getattr(self.method, "matmul", None) is not None:
      raise ValueError(f"ActQuant: {self.method.name} already quantizes activations at run time; wrap a weight-only "
                       "method (RTN, GPTQ, AWQ).")

  @property
  def name(self) -> str:
    return f"{self.method.name}+a{self.act_bits if self.act_format == 'int' else self.act_format}"

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
    return ActQuantMatmul(self.act_bits, self.act_format)

  def transform(self, block, stats, groups, plan, keep, view_of):
    return self.method.transform(block, stats, groups, plan, keep, view_of)

  def solve(self, w, gram, view=None):
    return self.method.solve(w, gram, view)
