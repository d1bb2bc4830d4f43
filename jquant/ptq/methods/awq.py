"""AWQ: activation-aware per-input-channel scales (searched on the block's inputs), folding, clip search, then
RTN -- or GPTQ on the scaled weights (AWQ + GPTQ)."""

from __future__ import annotations

import dataclasses

from jquant.core.granularity import PerTensor
from jquant.core.spec import QuantSpec
from jquant.ptq.access import kernel_of, linear_leaves, set_kernel
from jquant.ptq.methods.base import Scaling, check_spec, pos_int
from jquant.ptq.methods.gptq import GPTQ
from jquant.ptq.scaling import apply_group_scales, eff_gram, eff_vec
from jquant.solvers.awq import apply_clip, awq_clip, awq_scales
from jquant.solvers.rtn import rtn


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
    check_spec(self.spec, "AWQ")
    pos_int(self.grid, "grid", "AWQ")
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

  has_transform = True
  matmul = None

  @property
  def name(self) -> str:
    return "awq+gptq" if self.gptq is not None else "awq"

  @property
  def bits(self) -> int:
    return int(self.spec.qtype.bits)

  @property
  def float_inputs(self) -> bool:
    return self.gptq is None

  @property
  def clip_mode(self) -> str:
    """The `awq_clip` mode this config runs."""
    if self.clip_range != "auto":
      return self.clip_range
    return "absmax" if self.spec.symmetric else "minmax"

  def solve(self, w, gram, view=None):
    if self.gptq is not None:
      return self.gptq.solve(w, gram, view)
    return rtn(w, self.spec), None, {}

  def transform(self, block, stats, groups, plan, keep, view_of) -> Scaling:
    """Scale search on the captured inputs, folding (all scales searched on the unscaled weights, as the
    reference), then the clip search on the scaled weights; in place on the float ``block``."""
    spec, out = self.spec, Scaling()
    found = []
    # E[x x^T] of each matmul input, taken before any input_scale changes below
    moments = {p: eff_gram(stats[p], linear_leaves(block, p, view_of(p))) / max(stats[p].count, 1)
               for g in groups for p in g}
    for g, paths in enumerate(groups):
      target = plan.targets[g] if g < len(plan.targets) else None
      if target is None or target.kind == "none" or not any(keep(p) for p in paths):
        continue
      act = eff_vec(stats[paths[0]].mean_abs, linear_leaves(block, paths[0], view_of(paths[0])))
      res = awq_scales([kernel_of(block, p, view_of(p)) for p in paths], act, spec, gram=moments[paths[0]],
                       grid=self.grid, duo_scaling=self.duo_scaling)
      found.append((target, paths, res.scales))
      for p in paths:
        out.extra[p] = {"alpha": float(res.alpha)}
    scaled = {}
    for target, paths, s in found:
      info = apply_group_scales(block, target, paths, s, view_of)
      out.in_div.update(info["in_div"])
      out.out_div.update(info["out_div"])
      scaled.update(info["scaled"])
    if self.clip and not isinstance(spec.granularity, PerTensor):
      for paths in groups:
        for p in paths:
          if not keep(p) or p in plan.no_clip:
            continue
          gram = moments[p]
          if p in scaled:        # the scaled kernel reads x / s
            gram = gram / (scaled[p][:, None] * scaled[p][None, :])
          w = kernel_of(block, p, view_of(p))
          clip = awq_clip(w, None, spec, gram=gram, mode=self.clip_mode)
          set_kernel(block, p, view_of(p), apply_clip(w, clip.max_val, clip.min_val))
          out.extra.setdefault(p, {})["clipped"] = True
    return out
