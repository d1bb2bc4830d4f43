"""RTN: round-to-nearest weights (no data needed for the weights; calibration feeds only the report)."""

from __future__ import annotations

import dataclasses

from jquant.core.spec import QuantSpec
from jquant.ptq.methods.base import NoTransform, check_spec
from jquant.solvers.rtn import rtn


@dataclasses.dataclass(frozen=True)
class RTN(NoTransform):
  """Round-to-nearest with ``spec``."""

  spec: QuantSpec

  def __post_init__(self):
    check_spec(self.spec, "RTN")

  name = "rtn"
  float_inputs = False
  matmul = None

  @property
  def bits(self) -> int:
    return int(self.spec.qtype.bits)

  def solve(self, w, gram, view=None):  # pylint: disable=unused-argument
    return rtn(w, self.spec), None, {}
