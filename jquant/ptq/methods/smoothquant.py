"""SmoothQuant W8A8: per-input-channel migration scales, INT8 per-channel weights (rounded or GPTQ-solved) and
dynamic INT8 activations at run time (`W8A8Matmul`, dispatched by `jquant.ops.qdot`: the Pallas int8 kernel on a
GPU, XLA elsewhere)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jquant.core.granularity import PerTensor, PerToken
from jquant.core.qarray import QArray
from jquant.core.qtypes import INT8
from jquant.core.spec import QuantSpec
from jquant.ops import qdot, qmatmul
from jquant.ptq.access import kernel_of, linear_leaves
from jquant.ptq.methods.base import Scaling
from jquant.ptq.methods.gptq import GPTQ
from jquant.ptq.scaling import apply_group_scales, eff_vec
from jquant.solvers.smoothquant import (quantize_activations_int8, smoothquant_scales, w8a8_quantize_weight,
                                        w8a8_weight_spec, weight_absmax)

_ACT_SPECS = {"per_token": QuantSpec(qtype=INT8, granularity=PerToken()),
              "per_tensor": QuantSpec(qtype=INT8, granularity=PerTensor())}


@dataclasses.dataclass(frozen=True)
class W8A8Matmul:
  """Hashable ``matmul(x, kernel)``: dynamic INT8 activations (symmetric absmax / 127, per token or per tensor)
  times INT8 QArray weights with int32 accumulation, through `jquant.ops.qdot` (float kernels: plain matmul)."""

  act: str = "per_token"

  def __call__(self, x: jax.Array, kernel: Any) -> jax.Array:
    if not isinstance(kernel, QArray):
      return qmatmul(x, kernel)
    lead, k = x.shape[:-1], x.shape[-1]
    xq, sx = quantize_activations_int8(x.reshape(-1, k).astype(jnp.float32), self.act)
    spec = _ACT_SPECS[self.act]
    qx = QArray(qvalue=xq, scale=sx, zero_point=None, g_idx=None, qtype=INT8, spec=spec, dtype=str(x.dtype))
    return qdot(qx, kernel, out_dtype=x.dtype).reshape(*lead, kernel.shape[1])


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
      value -> attention output) or the layer's own ``input_scale`` (BERT GELU -> output; any group of a model
      jquant only knows by interception). The down_proj inputs of SwiGLU models carry the largest activation
      outliers, so ``"all"`` helps there (SmolLM2-135M Hamlet ppl 43.61 -> 43.12 at alpha 0.5, fp 42.56).
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

  has_transform = True
  bits = 8

  @property
  def name(self) -> str:
    return "smoothquant+gptq" if self.gptq is not None else "smoothquant"

  @property
  def spec(self) -> QuantSpec:
    return self.weight_spec()

  @property
  def float_inputs(self) -> bool:
    return self.gptq is None

  @property
  def matmul(self) -> W8A8Matmul:
    return W8A8Matmul(self.act)

  def solve(self, w, gram, view=None):
    if self.gptq is not None:
      return self.gptq.solve(w, gram, view)
    return w8a8_quantize_weight(w, per_channel=True), None, {}

  def transform(self, block, stats, groups, plan, keep, view_of) -> Scaling:
    """Migration scales from the captured act max and the current weights, folded in place."""
    out = Scaling()
    for g, paths in enumerate(groups):
      target = plan.targets[g] if g < len(plan.targets) else None
      if target is None or target.kind == "none" or not any(keep(p) for p in paths):
        continue
      if self.smooth == "norm" and not target.norm_fed:
        continue
      st = stats[paths[0]]
      w_max = weight_absmax([kernel_of(block, p, view_of(p)) for p in paths])
      s = smoothquant_scales(eff_vec(st.abs_max, linear_leaves(block, paths[0], view_of(paths[0]))), w_max,
                             self.alpha)
      info = apply_group_scales(block, target, paths, s, view_of)
      out.in_div.update(info["in_div"])
      out.out_div.update(info["out_div"])
      for p in paths:
        out.extra[p] = {"smooth_min": float(jnp.min(s)), "smooth_max": float(jnp.max(s))}
    return out
