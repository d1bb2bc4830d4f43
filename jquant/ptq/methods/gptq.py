"""GPTQ, sequential over blocks and true-sequential over each block's linear groups."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp

from jquant.core.calibration_methods import MSE
from jquant.core.granularity import PerGroup
from jquant.core.mx import NVFP4Scale, nvfp4_tensor_scale
from jquant.core.spec import QuantSpec
from jquant.ptq.methods.base import NoTransform, check_spec, grid_importance, pos_int
from jquant.solvers.gptq import gptq, gptq_solve
from jquant.solvers.grid import check_grid, grid_spec


@dataclasses.dataclass(frozen=True)
class GPTQ(NoTransform):
  """GPTQ (Frantar et al. 2022).

  Attributes:
    spec: the weight spec (e.g. UINT4 asymmetric ``PerGroup(axis=0, size=128)``).
    block_size: lazy-update block (128 in the reference).
    damp: relative dampening (fraction of mean diag H; 0.01 in the paper).
    act_order: quantize input features in descending ``diag(H)`` order. On a kernel with several input axes
      (``DenseGeneral(axis=(-2, -1))``) a ``g_idx`` cannot index them, so such kernels use static groups.
    static_groups: group params from the un-updated weights (act-order without ``g_idx``).
    grid: each group's range: "minmax" (the spec's own calibration), "mse" (searched for the least squared error of
      the group, on the error-fed weights as the group starts) or "imatrix" (that error weighted per input feature
      by ``diag(H)``, the inputs' second moments); see `jquant.solvers.grid`.
    search: the candidate ranges of the searches (``jq.MSE``; default: the spec's own MSE calibration, else 40
      shrink factors 1.0 .. 0.6).
  """

  spec: QuantSpec
  block_size: int = 128
  damp: float = 0.01
  act_order: bool = False
  static_groups: bool = False
  grid: str = "minmax"
  search: MSE | None = None

  def __post_init__(self):
    check_spec(self.spec, "GPTQ")
    check_grid(self.grid, self.search, "GPTQ")
    pos_int(self.block_size, "block_size", "GPTQ")
    if not isinstance(self.damp, (int, float)) or isinstance(self.damp, bool) or not math.isfinite(self.damp) \
        or self.damp < 0:
      raise ValueError(f"GPTQ: damp must be a finite float >= 0 (e.g. 0.01), got {self.damp!r}.")
    if self.static_groups and not isinstance(self.spec.granularity, PerGroup):
      raise ValueError(f"GPTQ: static_groups=True needs a PerGroup spec, got {self.spec.granularity}.")
    for f in ("act_order", "static_groups"):
      if not isinstance(getattr(self, f), bool):
        raise TypeError(f"GPTQ: {f} must be a bool, got {getattr(self, f)!r}.")

  float_inputs = False
  matmul = None

  @property
  def name(self) -> str:
    return "gptq" if self.grid == "minmax" else f"gptq+{self.grid}"

  @property
  def bits(self) -> int:
    return int(self.spec.qtype.bits)

  def solve(self, w, gram, view=None):
    static = self.static_groups
    grid, imp, extra = grid_importance(self.grid, gram)
    if self.act_order and not static and view is not None and len(view.in_axes) > 1 \
        and isinstance(self.spec.granularity, PerGroup):
      static = True
      extra["static_groups"] = "act-order over several input axes uses static groups (no g_idx)"
    # NVFP4: the solver's grid has tensor scale 1, so solve w / t (t: the NVFP4 tensor scale of w) and attach t.
    t = nvfp4_tensor_scale(w, self.spec) if self.spec.qtype.scale_format == "float8_e4m3fn" else None
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      qa, losses = gptq(w if t is None else w / t, gram, grid_spec(self.spec, grid, self.search),
                        block_size=self.block_size, damp=self.damp, act_order=self.act_order, static_groups=static,
                        importance=imp)
    if t is not None:
      qa, losses = dataclasses.replace(qa, scale=NVFP4Scale(block=qa.scale, tensor=t)), losses * (t * t)
    if caught:             # damping retries, RTN fallbacks: listed in the report's layer entry
      extra["warnings"] = extra.get("warnings", []) + [str(c.message) for c in caught]
    return qa, float(jnp.sum(losses)), extra

  def solve_stacked(self, w, grams):
    """Stacked kernels (E, K, N) with one Gram matrix each (E, K, K): one vmapped GPTQ program (shardable over E).

    Returns (QArray (E, K, N) as a stacked view of per-expert slices, per-expert losses (E,), extra), or None for
    specs the vmapped core does not cover (NVFP4's tensor scale): the caller then solves expert by expert."""
    if self.spec.qtype.scale_format == "float8_e4m3fn":
      return None
    qa, losses, info = _stacked_program(self.spec, self.block_size, self.act_order, self.static_groups)(
        w, grams, jnp.float32(self.damp))
    ok = jax.device_get(info.ok)
    if not ok.all():
      raise ValueError(f"GPTQ: the Cholesky factorization failed for experts {list(map(int, (~ok).nonzero()[0]))} "
                       "even with 100x damping; their Gram matrices are not positive semi-definite.")
    if not bool(jnp.all(jnp.isfinite(qa.scale))):
      raise ValueError("GPTQ: the stacked solve produced non-finite scales (a weight range the grid cannot hold).")
    used = jax.device_get(info.damp_used)
    extra = {}
    if (used > self.damp * (1 + 1e-6)).any():
      extra["warnings"] = [f"gptq: Cholesky needed damp={float(d):g} for expert {i}"
                           for i, d in enumerate(used) if d > self.damp * (1 + 1e-6)]
    return qa, jax.device_get(jnp.sum(losses, axis=(1, 2))), extra


@functools.lru_cache(maxsize=16)
def _stacked_program(spec, block_size, act_order, static_groups):
  solve = functools.partial(gptq_solve, spec=spec, block_size=block_size, act_order=act_order,
                            static_groups=static_groups)
  return jax.jit(jax.vmap(solve, in_axes=(0, 0, None)))
