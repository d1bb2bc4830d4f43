"""LLM.int8(): INT8 per-output-column weights; at run time vector-wise INT8 activations with outlier feature
columns (any ``|x| >= threshold``) multiplied in float (bitsandbytes' variant: with the dequantized INT8 weights)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from jquant.core.qarray import QArray
from jquant.ops import qmatmul
from jquant.ptq.methods.base import NoTransform
from jquant.solvers.llm_int8 import llm_int8_matmul, llm_int8_prepare


@dataclasses.dataclass(frozen=True)
class LLMInt8Matmul:
  """Hashable ``matmul(x, kernel)``: LLM.int8() for INT8 QArray kernels (XLA: the outlier split has no kernel)."""

  threshold: float = 6.0

  def __call__(self, x: jax.Array, kernel: Any) -> jax.Array:
    if not isinstance(kernel, QArray):
      return qmatmul(x, kernel)
    return llm_int8_matmul(x, kernel, threshold=self.threshold, out_dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class LLMInt8(NoTransform):
  """LLM.int8() with outlier ``threshold`` (6.0 in the paper)."""

  threshold: float = 6.0

  def __post_init__(self):
    if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) \
        or not math.isfinite(self.threshold) or self.threshold < 0:
      raise ValueError(f"LLMInt8: threshold must be a finite float >= 0 (6.0 in the paper), got {self.threshold!r}.")

  name = "llm_int8"
  bits = 8
  float_inputs = True

  @property
  def matmul(self) -> LLMInt8Matmul:
    return LLMInt8Matmul(float(self.threshold))

  def solve(self, w, gram, view=None):  # pylint: disable=unused-argument
    return llm_int8_prepare(w), None, {}
