"""HQQ: data-free half-quadratic zero points (`jquant.solvers.hqq`); calibration batches feed only the report."""

from __future__ import annotations

import dataclasses

from jquant.core.spec import QuantSpec
from jquant.ptq.methods.base import NoTransform, check_spec
from jquant.solvers.hqq import check_hqq_settings, hqq


@dataclasses.dataclass(frozen=True)
class HQQ(NoTransform):
  """HQQ with ``spec`` (asymmetric integer, e.g. UINT4 ``PerGroup(axis=0, size=64)``).

  Attributes:
    iters, p, beta, kappa: the half-quadratic solver's settings (the reference's defaults: 20, 0.7, 10, 1.01).
  """

  spec: QuantSpec
  iters: int = 20
  p: float = 0.7
  beta: float = 10.0
  kappa: float = 1.01

  def __post_init__(self):
    check_spec(self.spec, "HQQ")
    if self.spec.symmetric or not self.spec.qtype.is_int:
      raise ValueError(f"HQQ: HQQ solves zero points; use an asymmetric integer spec (symmetric=False, e.g. "
                       f"jq.UINT4), got {self.spec.qtype.name} symmetric={self.spec.symmetric}.")
    check_hqq_settings(self.iters, self.p, self.beta, self.kappa, "HQQ")

  name = "hqq"
  float_inputs = True      # data-free: no sequential re-capture needed
  matmul = None

  @property
  def bits(self) -> int:
    return int(self.spec.qtype.bits)

  def solve(self, w, gram, view=None):  # pylint: disable=unused-argument
    return hqq(w, self.spec, iters=self.iters, p=self.p, beta=self.beta, kappa=self.kappa), None, {}
