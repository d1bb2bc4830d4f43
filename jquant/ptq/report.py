"""What `jquant.ptq.quantize_model` did to each linear layer: bits, output SQNR, solver loss, time; plus totals."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.ops import qmatmul

__all__ = ["LayerReport", "PTQReport", "output_sqnr_db", "tree_nbytes"]


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

  def __str__(self) -> str:
    head = (f"PTQ {getattr(self.method, 'name', type(self.method).__name__)}: {len(self.layers)} linears, "
            f"{self.calib_batches} batches / {self.calib_tokens} tokens, {self.seconds:.1f} s, "
            f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB ({self.compression:.2f}x), "
            f"mean SQNR {self.mean_sqnr_db():.2f} dB")
    w = max([len(e.path) for e in self.layers] + [4])
    lines = [head, f"{'path':<{w}}  bits  sqnr_dB        loss   secs"]
    for e in self.layers:
      loss = "" if e.loss is None else f"{e.loss:.4g}"
      lines.append(f"{e.path:<{w}}  {e.bits:>4}  {e.sqnr_db:7.2f}  {loss:>10}  {e.seconds:5.2f}")
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


def output_sqnr_db(ref, approx) -> float:
  """``10 log10(sum ref^2 / sum (ref - approx)^2)`` in float64; inf when they are equal."""
  r = np.asarray(ref, np.float64)
  a = np.asarray(approx, np.float64)
  err = float(np.sum((r - a) ** 2))
  sig = float(np.sum(r ** 2))
  if err == 0.0:
    return float("inf")
  return 10.0 * math.log10(max(sig, 1e-300) / err)


def tree_nbytes(tree: Any) -> int:
  """Storage bytes of a params tree; QArray leaves count their packed size."""
  total = 0
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QArray)):
    if isinstance(leaf, QArray):
      total += leaf.nbytes
    else:
      total += int(np.prod(np.shape(leaf))) * jnp.dtype(leaf.dtype).itemsize
  return int(total)


def _layer_out(leaves: dict, kernel, x, matmul) -> jax.Array:
  if "input_scale" in leaves:
    x = x * leaves["input_scale"].astype(x.dtype)
  y = matmul(x, kernel)
  if "bias" in leaves:
    y = y + leaves["bias"].astype(y.dtype)
  return y


def layer_sqnr(fp_leaves, q_leaves, x, in_div=None, out_div=None, matmul=None) -> float:
  """Output SQNR of the quantized layer (inputs x / in_div, outputs * out_div) vs the float layer on x."""
  x = jnp.asarray(x, jnp.float32)
  if x.shape[0] == 0:
    return float("nan")
  ref = _layer_out(fp_leaves, fp_leaves["kernel"], x, qmatmul)
  xq = x / in_div if in_div is not None else x
  yq = _layer_out(q_leaves, q_leaves["kernel"], xq, matmul or qmatmul)
  if out_div is not None:
    yq = yq * out_div
  return output_sqnr_db(ref, yq)
