"""Per-input-channel scales for AWQ and SmoothQuant: where each linear group's ``1 / s`` can go, and exact folding.

A group of linears reading one input x gets kernels ``w * s[:, None]``; the ``1 / s`` is folded into the producer of
x (a `ScaleTarget`):

* ``"norm"``: the scale (and bias) of the norm feeding the group -- pre-LN models (Llama/SmolLM2: input_layernorm ->
  q/k/v, post_attention_layernorm -> gate/up);
* ``"linear"``: the output columns (and bias) of the previous linear -- Llama v_proj -> o_proj when the shapes match
  (not under grouped-query attention), up_proj -> down_proj (exact through the SwiGLU product), BERT value ->
  attention output (exact per head: attention mixes tokens, not features);
* ``"input_scale"``: an explicit ``input_scale`` param on each linear of the group (`jquant.models.Linear` multiplies
  its input by it) -- post-LN BERT/MiniLM, where the LayerNorm output is the residual stream and cannot be rescaled,
  and BERT's GELU -> output (the same single multiply as AWQ's ScaledActivation);
* ``"none"``: not scaled (Llama o_proj under GQA, as the AWQ reference does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp

from jquant.core.paths import get_in
from jquant.ptq.access import kernel_of, linear_leaves, set_input_scale, set_kernel
from jquant.solvers.folding import fold_scales_into_norm, fold_scales_into_prev_linear, scale_weight_rows

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ScaleTarget:
  """Where a group's ``1 / s`` goes: kind in {"norm", "linear", "input_scale", "none"}; ``path`` of the norm or
  previous linear relative to the block; ``norm_fed``: the group reads a norm output (SmoothQuant smooths only those)."""

  kind: str
  path: str | None = None
  norm_fed: bool = False


@dataclasses.dataclass(frozen=True)
class ScalePlan:
  targets: tuple[ScaleTarget, ...]
  no_clip: frozenset = frozenset()     # linears whose AWQ clip search is skipped (q/k: "qk bmm hard to clip")


def scale_plan(model, groups: Sequence[Sequence[str]]) -> ScalePlan:
  """Where each linear group's ``1 / s`` goes: the model's own ``scale_plan(groups)`` when it has one (jquant's
  Llama and BERT models know their norms and foldable linear pairs), else an explicit ``input_scale`` per group."""
  own = getattr(model, "scale_plan", None)
  if own is not None:
    plan = own(groups)
    if plan is not None:
      return plan
  return ScalePlan(tuple(ScaleTarget("input_scale") for _ in groups))


def apply_group_scales(block: PyTree, target: ScaleTarget, paths: Sequence[str], s, view_of=None) -> dict[str, Any]:
  """Folds per-input-channel scales ``s`` (K,) of one linear group into ``block`` (in place, float params).

  Kernels of ``paths`` become ``w * s[:, None]``; the ``1 / s`` goes to ``target``. The float block computes the
  same function afterwards (up to rounding).

  Returns:
    ``{"in_div": {path: s}, "out_div": {prev_linear_path: s}, "scaled": {path: s}}``: the input of each scaled
    linear is now ``x / s`` (norm / previous-linear targets; with an ``input_scale`` target the layer divides its own
    input), the previous linear's outputs are divided by ``s``; "scaled" lists every scaled linear.
  """
  s = jnp.asarray(s, jnp.float32)
  view_of = view_of or (lambda p: None)
  for p in paths:
    set_kernel(block, p, view_of(p), scale_weight_rows(kernel_of(block, p, view_of(p)), s))
  info: dict[str, Any] = {"in_div": {}, "out_div": {}, "scaled": {p: s for p in paths}}
  if target.kind == "norm":
    norm = get_in(block, target.path)
    new_scale, new_bias = fold_scales_into_norm(norm["scale"], norm.get("bias"), s)
    norm["scale"] = new_scale
    if new_bias is not None:
      norm["bias"] = new_bias
    info["in_div"] = {p: s for p in paths}
  elif target.kind == "linear":
    prev = get_in(block, target.path)
    w, b = fold_scales_into_prev_linear(prev["kernel"], prev.get("bias"), s)
    prev["kernel"] = w
    if b is not None:
      prev["bias"] = b
    info["in_div"] = {p: s for p in paths}
    info["out_div"] = {target.path: s}
  elif target.kind == "input_scale":
    for p in paths:
      cur = linear_leaves(block, p, view_of(p)).get("input_scale", jnp.ones_like(s))
      set_input_scale(block, p, view_of(p), (cur / s).astype(jnp.float32))
  else:
    raise ValueError(f"apply_group_scales: target kind {target.kind!r} cannot take scales.")
  return info


def eff_gram(st, leaves) -> jnp.ndarray:
  """Gram matrix of the matmul's input: captured inputs times the layer's own ``input_scale`` if it has one."""
  if "input_scale" not in leaves:
    return st.gram
  d = leaves["input_scale"].astype(jnp.float32)
  return st.gram * d[:, None] * d[None, :]


def eff_vec(v, leaves) -> jnp.ndarray:
  """A per-input-channel statistic of the matmul's input (times ``input_scale`` if the layer has one)."""
  return v * leaves["input_scale"].astype(jnp.float32) if "input_scale" in leaves else v
