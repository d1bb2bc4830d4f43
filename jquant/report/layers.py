"""Per-layer reports: what `jquant.ptq.quantize_model` did to each linear (bits, output SQNR, solver loss, time, the
scales a transform folded) plus totals."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jquant.report.table import text_table

__all__ = ["LayerReport", "PTQReport"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One quantized linear.

  Attributes:
    path: full param path of the linear, e.g. ``"layers_3/mlp/down_proj"``.
    method: method name ("rtn", "gptq", "awq", "awq+gptq", "smoothquant", "llm_int8").
    bits: weight bits.
    sqnr_db: output SQNR (dB) of the quantized vs the float layer on the captured calibration inputs (a strided
      token subsample): ``10 log10(sum y^2 / sum (y - y_q)^2)``; inf for an exact layer.
    loss: the solver's loss where it has one (GPTQ: sum of ``(w - q)^2 / d^2 / 2``), else None.
    seconds: wall time of this layer's solve.
    in_features, out_features: kernel shape.
    extra: method details (AWQ alpha, SmoothQuant scale range, GPTQ damping used, ...).
    in_div, out_div: (K,) / (N,) scales a transform folded elsewhere (AWQ / SmoothQuant): the running layer's input
      is the float layer's divided by ``in_div`` (folded into a norm or previous linear) and its output is divided
      by ``out_div`` (folded into the next linear); None where nothing was folded. ``sqnr_db`` is measured in the
      float model's coordinates; `jquant.ptq.layer_errors` needs these to measure a checkpoint's runtime the same way.
  """

  path: str
  method: str
  bits: int
  sqnr_db: float
  loss: float | None
  seconds: float
  in_features: int
  out_features: int
  extra: dict = dataclasses.field(default_factory=dict)
  in_div: Any = dataclasses.field(default=None, repr=False)
  out_div: Any = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class PTQReport:
  """Per-layer entries and totals of one `quantize_model` run.

  Attributes:
    method: the method config.
    layers: one `LayerReport` per quantized linear, in processing order.
    skipped: full paths of linears left in float (``skip=`` patterns).
    seconds: total wall time.
    bytes_before, bytes_after: storage of the whole params tree before/after (QArray values counted packed).
    calib_batches, calib_tokens: the calibration set size (real tokens).
    unsupported: (path, reason) of every layer with a ``kernel`` that the method cannot quantize (left in float).
  """

  method: Any
  layers: tuple[LayerReport, ...]
  skipped: tuple[str, ...]
  seconds: float
  bytes_before: int
  bytes_after: int
  calib_batches: int
  calib_tokens: int
  unsupported: tuple[tuple[str, str], ...] = ()   # (path, why) of layers with a kernel jquant cannot quantize

  def __getitem__(self, path: str) -> LayerReport:
    for e in self.layers:
      if e.path == path:
        return e
    raise KeyError(f"no quantized linear {path!r} in this report; paths look like {self.layers[0].path!r}."
                   if self.layers else f"the report holds no layers (asked for {path!r}).")

  @property
  def compression(self) -> float:
    return self.bytes_before / max(self.bytes_after, 1)

  def mean_sqnr_db(self) -> float:
    vals = [e.sqnr_db for e in self.layers if math.isfinite(e.sqnr_db)]
    return float(np.mean(vals)) if vals else float("inf")

  def divisors(self) -> dict[str, dict[str, np.ndarray]]:
    """``{path: {"in_div": (K,), "out_div": (N,)}}`` of the layers a transform scaled (see `LayerReport`)."""
    out = {}
    for e in self.layers:
      d = {k: np.asarray(v, np.float32) for k, v in (("in_div", e.in_div), ("out_div", e.out_div)) if v is not None}
      if d:
        out[e.path] = d
    return out

  def __str__(self) -> str:
    head = (f"PTQ {getattr(self.method, 'name', type(self.method).__name__)}: {len(self.layers)} linears, "
            f"{self.calib_batches} batches / {self.calib_tokens} tokens, {self.seconds:.1f} s, "
            f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB ({self.compression:.2f}x), "
            f"mean SQNR {self.mean_sqnr_db():.2f} dB")
    lines = [head] + text_table(("path", "bits", "sqnr_dB", "loss", "secs"), [
        (e.path, e.bits, f"{e.sqnr_db:.2f}", "" if e.loss is None else f"{e.loss:.4g}", f"{e.seconds:.2f}")
        for e in self.layers])
    for e in self.layers:
      if "experts" in e.extra:
        per = ", ".join(f"{x['expert']}:{x['tokens']}" + ("" if x["done"] == "solved" else f" {x['done']}")
                        for x in e.extra["experts"])
        lines.append(f"experts {e.path} (expert:tokens): {per}")
    if self.skipped:
      lines.append(f"skipped (float): {', '.join(self.skipped)}")
    for path, why in self.unsupported:
      lines.append(f"unsupported (float): {path}: {why}")
    return "\n".join(lines)
