"""The PTQ method protocol: what `jquant.ptq.quantize_model` asks of a method. A new method is one new file.

The driver (``jquant/ptq/pipeline.py``) never asks which method it runs; per block it does::

    inputs  = float block inputs if method.float_inputs else the quantized model's
    stats   = capture(block, inputs)                      # streamed Gram X^T X, mean|x|, max|x|, token sample
    scaling = method.transform(block, stats, ...)         # AWQ / SmoothQuant scales (folded or input_scale); or none
    for group in linear_groups(block):                    # true-sequential unless float_inputs
      qa, loss, extra = method.solve(w (K, N), gram, view)
    runtime = method.matmul                               # None (jq.qdot) or the W8A8 / LLM.int8 matmul

Attributes and methods of a method object (frozen, hashable dataclasses; validated at construction):

* ``name`` (str) and ``bits`` (int): for the report.
* ``float_inputs`` (bool): statistics come from the float model and the float block outputs feed the next block
  (the AWQ / SmoothQuant / LLM.int8 references); else blocks run sequentially on the quantized model's outputs and
  each linear group is captured again after the groups before it were quantized (GPTQ's true-sequential mode).
* ``has_transform`` (bool) and ``transform(block, stats, groups, plan, keep, view_of) -> Scaling``: per-input-channel
  scaling applied in place to the block's float params before solving.
* ``solve(w, gram, view=None) -> (QArray, loss | None, extra dict)``: quantizes one (K, N) kernel given the Gram
  matrix of its (scaled) inputs; ``view`` is the kernel's `MatrixView` when it is N-D.
* ``matmul``: the run-time ``matmul(x (M, K), kernel (K, N))`` for activation-quantizing methods, else None.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from jquant.core.granularity import PerChannel, PerGroup, PerTensor
from jquant.core.spec import QuantSpec
from jquant.solvers.grid import importance_from_gram

__all__ = ["PTQMethod", "Scaling", "check_method"]


@dataclasses.dataclass
class Scaling:
  """What a transform did, per linear path: the scale its input is now divided by (``in_div``), the scale a previous
  linear's outputs were divided by (``out_div``), and details for the report (``extra``)."""

  in_div: dict = dataclasses.field(default_factory=dict)
  out_div: dict = dataclasses.field(default_factory=dict)
  extra: dict = dataclasses.field(default_factory=dict)


@runtime_checkable
class PTQMethod(Protocol):
  name: str
  bits: int
  float_inputs: bool
  has_transform: bool
  matmul: Any

  def transform(self, block, stats, groups, plan, keep, view_of) -> Scaling:
    """Scales the block's float params in place."""

  def solve(self, w, gram, view=None) -> tuple[Any, float | None, dict]:
    """Quantizes one (K, N) kernel."""


class NoTransform:
  """Mixin: methods without a scaling stage."""

  has_transform = False

  def transform(self, block, stats, groups, plan, keep, view_of) -> Scaling:  # pylint: disable=unused-argument
    return Scaling()


def check_spec(spec: Any, what: str) -> None:
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"{what}: spec must be a jq.QuantSpec (e.g. QuantSpec(qtype=jq.UINT4, "
                    f"granularity=jq.PerGroup(axis=0, size=128), symmetric=False)), got {type(spec).__name__}.")
  g = spec.granularity
  ok = ((isinstance(g, PerGroup) and g.axis in (0, -2)) or (isinstance(g, PerChannel) and g.axis in (1, -1))
        or isinstance(g, PerTensor)) and not getattr(g, "batch_axes", ())
  if not ok:
    raise ValueError(f"{what}: granularity {g} does not fit (in, out) kernels; use PerGroup(axis=0, size=G) "
                     "(groups along the input features), PerChannel(axis=-1) or PerTensor().")
  if spec.stochastic_rounding:
    raise ValueError(f"{what}: stochastic_rounding is not supported for PTQ; use spec.replace(stochastic_rounding=False).")


def grid_importance(grid: str, gram) -> tuple[str, Any, dict]:
  """``(grid, importance, extra)`` for one solve: the "imatrix" grid's importance is ``diag(gram)`` normalised;
  a layer whose second moments are unusable falls back to the unweighted "mse" search, said in ``extra``."""
  if grid != "imatrix":
    return grid, None, {}
  imp, note = importance_from_gram(gram)
  if imp is None:
    return "mse", None, {"warnings": [note]}
  return grid, imp, {}


def pos_int(v: Any, name: str, what: str) -> None:
  if not isinstance(v, int) or isinstance(v, bool) or v < 1:
    raise ValueError(f"{what}: {name} must be a positive int, got {v!r}.")


def check_method(method: Any) -> None:
  if not isinstance(method, PTQMethod) or isinstance(method, type):
    raise TypeError(f"quantize_model: unknown method {method!r} ({type(method).__name__}); expected a PTQ method "
                    "such as jq.ptq.RTN, GPTQ, AWQ, SmoothQuant or LLMInt8 (e.g. jq.ptq.GPTQ(spec)), or an object "
                    "implementing jquant.ptq.methods.PTQMethod.")
