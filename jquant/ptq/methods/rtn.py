"""RTN: round-to-nearest weights, on the spec's own ranges or on searched ones (``grid="mse"`` / ``"imatrix"``, see
`jquant.solvers.grid`: the imatrix search weights each input feature's error by its activation second moment, so it
needs the calibration the pipeline streams; the min/max and MSE grids need no data)."""

from __future__ import annotations

import dataclasses

from jquant.core.calibration_methods import MSE
from jquant.core.spec import QuantSpec
from jquant.ptq.methods.base import NoTransform, check_spec, grid_importance
from jquant.solvers.grid import check_grid, grid_quantize
from jquant.solvers.rtn import rtn


@dataclasses.dataclass(frozen=True)
class RTN(NoTransform):
  """Round-to-nearest with ``spec``.

  Attributes:
    spec: the weight spec.
    grid: "minmax" (the spec's own ranges), "mse" (each group's range searched for the least squared error) or
      "imatrix" (that error weighted per input feature by ``E[x^2]`` of the calibration inputs).
    search: the candidate ranges of the "mse" / "imatrix" searches (``jq.MSE``; default 40 shrink factors
      1.0 .. 0.6, `jquant.solvers.grid.DEFAULT_SEARCH`).
  """

  spec: QuantSpec
  grid: str = "minmax"
  search: MSE | None = None

  def __post_init__(self):
    check_spec(self.spec, "RTN")
    check_grid(self.grid, self.search, "RTN")

  float_inputs = False
  matmul = None

  @property
  def name(self) -> str:
    return "rtn" if self.grid == "minmax" else f"rtn+{self.grid}"

  @property
  def bits(self) -> int:
    return int(self.spec.qtype.bits)

  def solve(self, w, gram, view=None):  # pylint: disable=unused-argument
    if self.grid == "minmax":
      return rtn(w, self.spec), None, {}
    grid, imp, extra = grid_importance(self.grid, gram)
    return grid_quantize(w, self.spec, grid, imp, self.search), None, extra
