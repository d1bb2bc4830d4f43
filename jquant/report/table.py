"""The one table / PNG writer of every report, and the per-layer rows of a checkpoint report.

A row is a dict: ``layer`` (param path without ``/kernel``), ``qtype``, ``bytes`` (packed), ``bytes_fp32``,
``bytes_int8`` (int8 codes + one float32 scale per output channel), ``weight_sqnr_db`` (the dequantized kernel vs the
float kernel in the running layer's coordinates), and where measured ``output_sqnr_db`` plus the pipeline's
``loss`` / ``seconds``. `layer_rows` builds them, `format_table` prints them worst first, `plot` draws them,
`suggest_8bit` picks layers to keep at 8 bit within a size budget.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jquant.core.paths import flatten
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize
from jquant.report.metrics import sqnr_db

__all__ = ["format_table", "layer_rows", "plot", "quality", "suggest_8bit", "text_table"]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False) -> list[str]:
  """Lines of a table: fixed-width columns (numbers right-aligned), or markdown (``| a | b |``)."""
  cells = [[str(c) for c in r] for r in rows]
  if markdown:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |"
                                                                             for r in cells]
  widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
  right = [bool(cells) and all(_numeric(r[i]) for r in cells) for i in range(len(headers))]
  line = lambda vals: "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(vals, widths, right)).rstrip()
  return [line(list(headers))] + [line(r) for r in cells]


def _numeric(s: str) -> bool:
  try:
    float(s.rstrip("x"))
    return True
  except ValueError:
    return s == ""


def quality(row: dict) -> float:
  """The row's headline quality: output SQNR where measured, else weight SQNR (worst first sorts on it)."""
  return row.get("output_sqnr_db", row["weight_sqnr_db"])


def _transformed(w, div: dict | None, input_scale=None):
  """The float kernel in the running layer's coordinates: rows times ``in_div`` and divided by the layer's own
  ``input_scale`` (the runtime multiplies its input by it), columns divided by ``out_div``."""
  if input_scale is not None:
    w = w / jnp.asarray(input_scale, jnp.float32).reshape(-1, *([1] * (w.ndim - 1)))
  if not div:
    return w
  if "in_div" in div:
    w = w * jnp.asarray(div["in_div"], jnp.float32).reshape(-1, *([1] * (w.ndim - 1)))
  if "out_div" in div:
    w = w / jnp.asarray(div["out_div"], jnp.float32)
  return w


def layer_rows(params, qparams, *, output_sqnr: dict[str, float] | None = None,
               divisors: dict[str, dict] | None = None, extra: dict[str, dict] | None = None) -> list[dict]:
  """One row per `QArray` leaf of ``qparams`` (module docstring), worst first.

  Args:
    params: the float params ``qparams`` was quantized from (same paths).
    output_sqnr: ``{layer: dB}`` measured elsewhere (the pipeline's report, or `jquant.ptq.layer_errors`).
    divisors: ``{layer: {"in_div", "out_div"}}`` scales a transform folded (`PTQReport.divisors`).
    extra: ``{layer: {...}}`` more columns (e.g. the pipeline's ``loss`` and ``seconds``).
  """
  flat_f, flat_q = flatten(params), flatten(qparams)
  rows = []
  for path, qa in flat_q.items():
    if not isinstance(qa, QArray):
      continue
    layer = path.rsplit("/kernel", 1)[0]
    w = _transformed(jnp.asarray(flat_f[path], jnp.float32), (divisors or {}).get(layer),
                     flat_q.get(f"{layer}/input_scale"))
    row = {"layer": layer, "qtype": qa.qtype.name, "bytes": qa.nbytes, "bytes_fp32": int(w.size * 4),
           "bytes_int8": int(w.size + 4 * w.shape[-1]), "weight_sqnr_db": sqnr_db(w, dequantize(qa, jnp.float32))}
    if output_sqnr is not None and layer in output_sqnr:
      row["output_sqnr_db"] = float(output_sqnr[layer])
    row.update((extra or {}).get(layer, {}))
    rows.append(row)
  rows.sort(key=quality)
  return rows


def format_table(rows: list[dict]) -> str:
  """A summary line (tensor count, MiB, mean and worst SQNR), then the markdown table of `layer_rows` rows."""
  key = "output_sqnr_db" if any("output_sqnr_db" in r for r in rows) else "weight_sqnr_db"
  measured = [r for r in rows if key in r and math.isfinite(r[key])]
  worst = min(measured, key=lambda r: r[key]) if measured else None
  head = (f"{len(rows)} quantized tensors, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB; {key[:-8]} SQNR mean "
          f"{np.mean([r[key] for r in measured]):.2f} dB over {len(measured)}, worst {worst['layer']} "
          f"{worst[key]:.2f} dB" if worst else f"{len(rows)} quantized tensors")
  body = [(r["layer"], r["qtype"], f"{r['weight_sqnr_db']:.2f}", f"{r.get('output_sqnr_db', float('nan')):.2f}",
           f"{r['bytes'] / 1024:.1f}") for r in rows]
  return "\n".join([head] + text_table(("layer", "qtype", "weight SQNR dB", "output SQNR dB", "KiB"), body,
                                       markdown=True))


def suggest_8bit(rows: list[dict], budget_bytes: float) -> list[str]:
  """Greedy: upgrade the worst layers (by output SQNR) to int8 per-channel (``bytes_int8``: codes + scales; ~1 byte
  per weight when a row lacks it) while the total fits."""
  total = sum(r["bytes"] for r in rows)
  keep = []
  for r in rows:
    extra = r.get("bytes_int8", r["bytes_fp32"] // 4) - r["bytes"]
    if extra > 0 and total + extra <= budget_bytes:
      keep.append(r["layer"])
      total += extra
  return keep


def plot(rows: list[dict], path: Path) -> None:
  """A horizontal bar per row (worst first): output SQNR where measured, else weight SQNR."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(rows))))
  ax.barh(range(len(rows)), [quality(r) for r in rows])
  ax.set_yticks(range(len(rows)), [r["layer"] for r in rows], fontsize=6)
  ax.invert_yaxis()
  ax.set_xlabel("output SQNR (dB; weight SQNR where no output was measured), worst first")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
