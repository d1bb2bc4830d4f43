"""AutoRound: learned rounding offsets and clip factors per block (`jquant.ptq.learned_rounding`), driven by
`jquant.ptq.block_solve` (the protocol's block-wise solve, ``solves_blocks = True``)."""

from __future__ import annotations

import dataclasses
import math

from jquant.core.spec import QuantSpec
from jquant.ptq.methods.base import NoTransform, check_spec, pos_int
from jquant.ptq.learned_rounding import autoround_learn, autoround_quantize
from jquant.solvers.rtn import rtn


@dataclasses.dataclass(frozen=True)
class AutoRound(NoTransform):
  """AutoRound (SignRound): per block, sign-SGD on the block-output MSE against the float block.

  Attributes:
    spec: the weight spec (integer qtype; groups along the input features, per channel or per tensor).
    steps: sign-SGD steps per block (200 in the reference).
    lr: initial step, decaying linearly to 0; None: ``1 / steps`` (the reference).
    batch_rows: sequences of a calibration batch per step (None: the whole batch); the steps cycle over the
      batches (and over row slices of each). Fewer rows make a step cheaper (the reference uses 8 sequences).
  """

  spec: QuantSpec
  steps: int = 200
  lr: float | None = None
  batch_rows: int | None = None

  def __post_init__(self):
    check_spec(self.spec, "AutoRound")
    if not self.spec.qtype.is_int:
      raise ValueError(f"AutoRound: learned rounding needs an integer qtype (e.g. jq.UINT4), got "
                       f"{self.spec.qtype.name}.")
    pos_int(self.steps, "steps", "AutoRound")
    if self.batch_rows is not None:
      pos_int(self.batch_rows, "batch_rows", "AutoRound")
    if self.lr is not None and (not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool)
                                or not math.isfinite(self.lr) or self.lr <= 0):
      raise ValueError(f"AutoRound: lr must be a finite float > 0 or None (1 / steps), got {self.lr!r}.")

  name = "autoround"
  float_inputs = False
  solves_blocks = True
  matmul = None

  @property
  def bits(self) -> int:
    return int(self.spec.qtype.bits)

  def learn(self, loss_fn, ws: dict):
    """Traced inside the block program: the learned params of every kernel, the best and the starting loss."""
    lr = self.lr if self.lr is not None else 1.0 / self.steps
    return autoround_learn(loss_fn, ws, self.spec, self.steps, float(lr))

  def export(self, w, params):
    return autoround_quantize(w, params, self.spec)

  def solve(self, w, gram, view=None):  # pylint: disable=unused-argument
    """Linears outside any block (a generic model's head) are rounded to nearest."""
    return rtn(w, self.spec), None, {"note": "outside the blocks: rounded to nearest"}
