"""PTQ method configs for `jquant.ptq.quantize_model`: frozen, validated, hashable dataclasses.

Weight-only methods (`RTN`, `GPTQ`, `AWQ`) store `QArray` kernels that the models multiply with
``jquant.ops.qdot``. Activation-quantizing methods (`SmoothQuant`, `LLMInt8`) also need the model to run its
linears with ``method.matmul`` (see `jquant.ptq.runtime_model`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from jquant.core.granularity import PerChannel, PerGroup, PerTensor
from jquant.core.spec import QuantSpec
from jquant.models.layers import default_matmul
from jquant.solvers.llm_int8 import llm_int8_matmul
from jquant.solvers.smoothquant import w8a8_matmul, w8a8_weight_spec

__all__ = ["AWQ", "GPTQ", "LLMInt8", "METHODS", "RTN", "SmoothQuant", "LLMInt8Matmul", "W8A8Matmul"]


def _check_spec(spec: Any, what: str) -> None:
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


def _pos_int(v: Any, name: str, what: str) -> None:
  if not isinstance(v, int) or isinstance(v, bool) or v < 1:
    raise ValueError(f"{what}: {name} must be a positive int, got {v!r}.")


@dataclasses.dataclass(frozen=True)
class RTN:
  """Round-to-nearest weights (no calibration for the weights; calibration feeds only the report)."""

  spec: QuantSpec

  def __post_init__(self):
    _check_spec(self.spec, "RTN")

  name = "rtn"


@dataclasses.dataclass(frozen=True)
class GPTQ:
  """GPTQ, sequential over blocks and true-sequential over each block's linear sub-groups.

  Attributes:
    spec: the weight spec (e.g. UINT4 asymmetric ``PerGroup(axis=0, size=128)``).
    block_size: lazy-update block (128 in the reference).
    damp: relative dampening (fraction of mean diag H; 0.01 in the paper).
    act_order: quantize input features in descending ``diag(H)`` order.
    static_groups: group params from the un-updated weights (act-order without ``g_idx``).
  """

  spec: QuantSpec
  block_size: int = 128
  damp: float = 0.01
  act_order: bool = False
  static_groups: bool = False

  def __post_init__(self):
    _check_spec(self.spec, "GPTQ")
    _pos_int(self.block_size, "block_size", "GPTQ")
    if not isinstance(self.damp, (int, float)) or isinstance(self.damp, bool) or not math.isfinite(self.damp) \
        or self.damp < 0:
      raise ValueError(f"GPTQ: damp must be a finite float >= 0 (e.g. 0.01), got {self.damp!r}.")
    if self.static_groups and not isinstance(self.spec.granularity, PerGroup):
      raise ValueError(f"GPTQ: static_groups=True needs a PerGroup spec, got {self.spec.granularity}.")
    for f in ("act_order", "static_groups"):
      if not isinstance(getattr(self, f), bool):
        raise TypeError(f"GPTQ: {f} must be a bool, got {getattr(self, f)!r}.")

  name = "gptq"


@dataclasses.dataclass(frozen=True)
class AWQ:
  """AWQ: activation-aware scale search (on float inputs), folding, clip search, then RTN (or GPTQ).

  Attributes:
    spec: the weight spec.
    grid: number of alphas ``i / grid`` searched (20 in the reference).
    clip: run the per-group clip search after scaling (q/k projections are skipped, as in the reference).
    clip_range: ``"auto"`` (``"minmax"`` for asymmetric specs, ``"absmax"`` for symmetric ones), ``"absmax"`` (the
      reference's symmetric clamp) or ``"minmax"`` (shrink both ends of the asymmetric range); see
      `jquant.solvers.awq_clip`.
    duo_scaling: AutoAWQ's scales ``mean|x|^a / w_mean^(1-a)`` instead of the reference's ``mean|x|^a``.
    gptq: optional `GPTQ` config: quantize the scaled/clipped weights with GPTQ instead of RTN (AWQ + GPTQ). Its
      spec must equal ``spec``. Then the blocks are processed sequentially with quantized outputs.
  """

  spec: QuantSpec
  grid: int = 20
  clip: bool = True
  gptq: GPTQ | None = None
  clip_range: str = "auto"
  duo_scaling: bool = False

  def __post_init__(self):
    _check_spec(self.spec, "AWQ")
    _pos_int(self.grid, "grid", "AWQ")
    if not isinstance(self.clip, bool):
      raise TypeError(f"AWQ: clip must be a bool, got {self.clip!r}.")
    if not isinstance(self.duo_scaling, bool):
      raise TypeError(f"AWQ: duo_scaling must be a bool, got {self.duo_scaling!r}.")
    if self.clip_range not in ("auto", "absmax", "minmax"):
      raise ValueError(f"AWQ: clip_range must be 'auto', 'absmax' (the reference) or 'minmax', got "
                       f"{self.clip_range!r}.")
    if self.gptq is not None:
      if not isinstance(self.gptq, GPTQ):
        raise TypeError(f"AWQ: gptq must be a jq.ptq.GPTQ config or None, got {type(self.gptq).__name__}.")
      if self.gptq.spec != self.spec:
        raise ValueError(f"AWQ: gptq.spec {self.gptq.spec} differs from spec {self.spec}; use the same spec.")

  @property
  def name(self) -> str:
    return "awq+gptq" if self.gptq is not None else "awq"

  @property
  def clip_mode(self) -> str:
    """The `awq_clip` mode this config runs."""
    if self.clip_range != "auto":
      return self.clip_range
    return "absmax" if self.spec.symmetric else "minmax"


@dataclasses.dataclass(frozen=True)
class W8A8Matmul:
  """Hashable ``matmul(x, kernel)``: INT8 weights x dynamic INT8 activations for INT8 QArray kernels."""

  act: str = "per_token"

  def __call__(self, x: jax.Array, kernel: Any) -> jax.Array:
    if isinstance(kernel, (jax.Array, np.ndarray)):
      return default_matmul(x, kernel)
    return w8a8_matmul(x, kernel, act=self.act, out_dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class LLMInt8Matmul:
  """Hashable ``matmul(x, kernel)``: LLM.int8() (vector-wise INT8 + outlier decomposition) for INT8 kernels."""

  threshold: float = 6.0

  def __call__(self, x: jax.Array, kernel: Any) -> jax.Array:
    if isinstance(kernel, (jax.Array, np.ndarray)):
      return default_matmul(x, kernel)
    return llm_int8_matmul(x, kernel, threshold=self.threshold, out_dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class SmoothQuant:
  """SmoothQuant W8A8: migration scales on the norm-fed linears, INT8 per-channel weights for every linear and
  dynamic INT8 activations (``act``: "per_token" or "per_tensor") at run time through ``matmul``.

  Attributes:
    alpha: migration strength in [0, 1] (0.5 OPT, 0.8 LLaMA, 0.85 Llama-2/3).
    act: activation granularity of the run-time matmul.
    smooth: which linear groups get migration scales. ``"norm"`` (the reference): only the norm-fed groups (q/k/v,
      gate/up; MiniLM's LN-fed groups through ``input_scale``). ``"all"``: also every group whose ``1 / s`` folds
      exactly elsewhere -- a previous linear (Llama up_proj -> down_proj, v_proj -> o_proj without GQA, BERT
      value -> attention output) or the layer's own ``input_scale`` (BERT GELU -> output). The down_proj inputs
      of SwiGLU models carry the largest activation outliers, so ``"all"`` helps there (SmolLM2-135M Hamlet ppl
      43.61 -> 43.12 at alpha 0.5, fp 42.56).
    gptq: optional `GPTQ` config with the W8A8 weight grid (``SmoothQuant.weight_spec()``: INT8 symmetric per
      output channel): the smoothed weights are solved with GPTQ instead of rounded (llm-compressor's W8A8
      recipe); blocks then run sequentially on the quantized model's inputs.
  """

  alpha: float = 0.5
  act: str = "per_token"
  smooth: str = "norm"
  gptq: GPTQ | None = None

  @staticmethod
  def weight_spec() -> QuantSpec:
    """The INT8 weight grid the W8A8 matmul runs: symmetric, one scale per output channel."""
    return w8a8_weight_spec(per_channel=True)

  @property
  def name(self) -> str:
    return "smoothquant+gptq" if self.gptq is not None else "smoothquant"

  @property
  def spec(self) -> QuantSpec:
    return self.weight_spec()

  def __post_init__(self):
    if self.smooth not in ("norm", "all"):
      raise ValueError(f"SmoothQuant: smooth must be 'norm' (norm-fed groups, as the reference) or 'all', got "
                       f"{self.smooth!r}.")
    if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"SmoothQuant: alpha must be a float in [0, 1], got {self.alpha!r}.")
    if self.act not in ("per_token", "per_tensor"):
      raise ValueError(f"SmoothQuant: act must be 'per_token' or 'per_tensor', got {self.act!r}.")
    if self.gptq is not None:
      if not isinstance(self.gptq, GPTQ):
        raise TypeError(f"SmoothQuant: gptq must be a jq.ptq.GPTQ config or None, got {type(self.gptq).__name__}.")
      if self.gptq.spec != self.weight_spec() or self.gptq.act_order:
        raise ValueError(f"SmoothQuant: gptq must use the W8A8 weight grid SmoothQuant.weight_spec() (INT8 "
                         f"symmetric per channel) without act_order (the int8 matmul needs natural-order rows); got "
                         f"spec {self.gptq.spec}, act_order={self.gptq.act_order}.")

  @property
  def matmul(self) -> W8A8Matmul:
    return W8A8Matmul(self.act)


@dataclasses.dataclass(frozen=True)
class LLMInt8:
  """LLM.int8(): INT8 per-output-column weights; at run time vector-wise INT8 activations with the feature columns
  holding any ``|x| >= threshold`` multiplied in float (bitsandbytes' variant: with the dequantized INT8 weights)."""

  threshold: float = 6.0

  def __post_init__(self):
    if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) \
        or not math.isfinite(self.threshold) or self.threshold < 0:
      raise ValueError(f"LLMInt8: threshold must be a finite float >= 0 (6.0 in the paper), got {self.threshold!r}.")

  name = "llm_int8"

  @property
  def matmul(self) -> LLMInt8Matmul:
    return LLMInt8Matmul(float(self.threshold))


METHODS = (RTN, GPTQ, AWQ, SmoothQuant, LLMInt8)


def method_bits(method: Any) -> int:
  """Weight bits of a method's kernels."""
  if isinstance(method, (SmoothQuant, LLMInt8)):
    return 8
  return int(method.spec.qtype.bits)


def check_method(method: Any) -> None:
  if not isinstance(method, METHODS):
    raise TypeError(f"quantize_model: unknown method {method!r} ({type(method).__name__}); expected one of "
                    f"{', '.join(m.__name__ for m in METHODS)} from jquant.ptq, e.g. jq.ptq.GPTQ(spec).")

