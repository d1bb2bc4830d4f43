"""The demo's picture: quality against bytes of weights stored, one marker per row, read at a glance.

* x: weights stored (MB); y: Hamlet perplexity (log scale, lower is better) or mean cosine to fp32 (higher is better).
* The fp32 reference is a dashed horizontal line (and its point); the RTN rows (the no-data baseline) are joined by
  a dotted line; each method family has one colour, each bit width one marker shape (legend).
* Every point carries a short label placed where it overlaps no other label, no marker and stays inside the axes:
  candidate positions on rings of growing radius around the point, first fit wins; labels away from their point get
  a thin leader line. `label_boxes` returns the placed boxes (the tests check that no two overlap).
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["figure", "label_boxes", "save"]

_COLORS = {"fp32": "black", "RTN": "tab:gray", "GPTQ": "tab:blue", "AWQ": "tab:orange", "SmoothQuant": "tab:green",
           "LLM.int8": "tab:red"}
_MARKERS = {32: "*", 8: "s", 4: "o", 3: "^", 2: "v"}
_PAD = 2.0          # display pixels kept free around each label


def _family(method: str) -> str:
  for k in _COLORS:
    if method.startswith(k):
      return k
  return method.split(" ")[0]


def _label(r: dict) -> str:
  short = r["method"].split(" (")[0]
  if "imatrix" in r["method"]:        # two GPTQ w4 rows (MSE and imatrix grids) must not share a label
    short += " imatrix"
  text = "fp32" if r["bits"] == 32 else f"{short} w{r['bits']}"
  if r["bits"] != 32 and r.get("embedding") == "float":
    text += ", fp emb"
  return text


def _overlaps(a, b) -> bool:
  return not (a.x1 + _PAD <= b.x0 or b.x1 + _PAD <= a.x0 or a.y1 + _PAD <= b.y0 or b.y1 + _PAD <= a.y0)


def _inside(box, frame) -> bool:
  return box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1


def _candidates():
  """(dx, dy) offsets in points: 8 directions on rings of growing radius, nearest first."""
  for radius in (6, 16, 28, 42, 58, 76, 96):
    for k in range(16 if radius > 16 else 8):
      a = 2 * math.pi * k / (16 if radius > 16 else 8)
      yield radius * math.cos(a), radius * math.sin(a)


def _place(ax, fig, points, texts, color_of) -> list:
  from matplotlib.text import Text  # pylint: disable=import-outside-toplevel
  from matplotlib.transforms import Bbox  # pylint: disable=import-outside-toplevel
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  frame = ax.get_window_extent(renderer)
  disp = ax.transData.transform(points)
  taken = [Bbox.from_extents(x - 6, y - 6, x + 6, y + 6) for x, y in disp]     # the markers
  placed = []
  for (x, y), text, color in zip(points, texts, color_of):
    best = None
    for dx, dy in _candidates():
      ha = "left" if dx > 1 else "right" if dx < -1 else "center"
      va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
      ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=7,
                        color=color)
      ann.update_positions(renderer)
      box = Text.get_window_extent(ann, renderer)
      if _inside(box, frame) and not any(_overlaps(box, t) for t in taken):
        best = ann
        if math.hypot(dx, dy) > 10:
          ann.remove()
          best = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=7,
                             color=color, arrowprops=dict(arrowstyle="-", lw=0.5, color=color, shrinkA=0, shrinkB=3))
        taken.append(box)
        placed.append(best)
        break
      ann.remove()
    if best is None:
      raise RuntimeError(f"demo plot: no free place for the label {text!r}; enlarge the figure.")
  return placed


def figure(name: str, rows: list[dict]):
  """The matplotlib Figure for the demo ``rows`` of model ``name``: its kind's headline metric (smollm2: perplexity,
  on a log scale; minilm: cosine)."""
  from jquant.cli.registry import model_kind  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import ScalarFormatter  # pylint: disable=import-outside-toplevel
  kind = model_kind(name)
  key, log_y = kind.metric, kind.lower_is_better
  fig, ax = plt.subplots(figsize=(9, 5.5))
  fp = [r for r in rows if r["bits"] == 32]
  if fp:
    ax.axhline(fp[0][key], color="black", ls="--", lw=0.8, zorder=1)
  rtn = sorted((r for r in rows if _family(r["method"]) == "RTN" and r.get("embedding") != "float"),
               key=lambda r: r["size_mb"])
  if len(rtn) > 1:
    ax.plot([r["size_mb"] for r in rtn], [r[key] for r in rtn], ls=":", color=_COLORS["RTN"], lw=1, zorder=1)
  for r in rows:
    ax.scatter(r["size_mb"], r[key], marker=_MARKERS.get(r["bits"], "o"), s=60 if r["bits"] == 32 else 36,
               color=_COLORS.get(_family(r["method"]), "tab:purple"), zorder=3,
               facecolors="none" if r.get("embedding") == "float" and r["bits"] != 32 else None)
  if log_y:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
  ax.set_ylabel(kind.metric_label)
  ax.set_xlabel("weights stored (MB)")
  lo, hi = min(r["size_mb"] for r in rows), max(r["size_mb"] for r in rows)
  ax.set_xlim(lo - 0.08 * (hi - lo), hi + 0.25 * (hi - lo))
  ys = [r[key] for r in rows]
  if log_y:
    ax.set_ylim(min(ys) / 1.12, max(ys) * 1.35)
  else:
    span = max(ys) - min(ys) or 0.01
    ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.12 * span)
  ax.set_title(f"jquant on {name}: quality vs weight bytes")
  handles = [Line2D([], [], color="black", ls="--", label="fp32 reference"),
             Line2D([], [], color=_COLORS["RTN"], ls=":", label="RTN (no data) baseline")]
  families = []
  for r in rows:
    f = _family(r["method"])
    if f not in families and f != "fp32" and r["bits"] != 32:
      families.append(f)
  handles += [Line2D([], [], ls="", marker="o", color=_COLORS.get(f, "tab:purple"), label=f) for f in families]
  handles += [Line2D([], [], ls="", marker=_MARKERS[b], color="dimgray", label=f"w{b}")
              for b in sorted({r["bits"] for r in rows if r["bits"] != 32}, reverse=True) if b in _MARKERS]
  if any(r.get("embedding") == "float" and r["bits"] != 32 for r in rows):
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="dimgray", label="float embedding"))
  ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  fig.tight_layout()
  points = [(r["size_mb"], r[key]) for r in rows]
  colors = [_COLORS.get(_family(r["method"]), "tab:purple") for r in rows]
  _place(ax, fig, points, [_label(r) for r in rows], colors)
  return fig


def label_boxes(fig) -> list:
  """Display-space bounding boxes of the text of every label drawn inside the axes (leader lines excluded)."""
  from matplotlib.text import Text  # pylint: disable=import-outside-toplevel
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  return [Text.get_window_extent(t, renderer) for ax in fig.axes for t in ax.texts]


def save(name: str, rows: list[dict], path: Path) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig = figure(name, rows)
  fig.savefig(path, dpi=120)
  plt.close(fig)
