"""``python -m jquant report DIR [--budget-mb MB]``: per-layer quality of a quantized checkpoint.

For every quantized linear: weight SQNR and output SQNR (``x @ W`` vs ``x @ dequantize(Wq)`` on inputs captured
from the float model on calibration data), printed as a table (worst first) and plotted to ``DIR/layers.png``.
With ``--budget-mb`` it suggests which layers to keep at 8 bit: greedily the worst layers by output SQNR, while
the total weight size stays within the budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jquant as jq
from jquant.cli import common
from jquant.ptq.layer_inputs import capture_linear_inputs

NAME = "report"
HELP = "per-layer SQNR / output error of a quantized checkpoint (+ PNG, + a mixed-bit suggestion)"
EPILOG = """examples:
  python -m jquant report q/                     # per-layer weight / output SQNR, worst first (+ q/layers.png)
  python -m jquant report q/ --budget-mb 80      # which layers to keep at 8 bit within 80 MiB of weights
  python -m jquant report q/ --samples 2         # output SQNR on fewer calibration samples (faster)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("dir", metavar="DIR", help="checkpoint folder written by `python -m jquant quantize`")
  parser.add_argument("--budget-mb", type=float, default=None,
                      help="suggest layers to keep at 8 bit within this total weight size (MiB)")
  parser.add_argument("--samples", type=int, default=8, help="calibration windows/paragraphs for output errors")


def layer_table(params, qparams, inputs: dict[str, np.ndarray]) -> list[dict]:
  rows = []
  flat_q = {jq.params.path_str(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(qparams, is_leaf=lambda x: isinstance(x, jq.QArray))[0]}
  flat_f = {jq.params.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, qa in flat_q.items():
    if not isinstance(qa, jq.QArray):
      continue
    w = jnp.asarray(flat_f[path], jnp.float32)
    wq = jq.dequantize(qa, jnp.float32)
    row = {"layer": path.rsplit("/kernel", 1)[0], "qtype": qa.qtype.name, "bytes": qa.nbytes,
           "bytes_fp32": int(w.size * 4), "weight_sqnr_db": float(jq.sqnr(w, wq)),
           "bytes_int8": int(w.size + 4 * w.shape[-1])}    # int8 codes + one float32 scale per output channel
    x = inputs.get(row["layer"])
    if x is not None:
      x = jnp.asarray(x, jnp.float32)
      if "input_scale" in _subtree(qparams, row["layer"]):
        x = x * jnp.asarray(_subtree(qparams, row["layer"])["input_scale"])
      row["output_sqnr_db"] = float(jq.sqnr(x @ w, x @ wq))
    rows.append(row)
  rows.sort(key=lambda r: r.get("output_sqnr_db", r["weight_sqnr_db"]))
  return rows


def format_table(rows: list[dict]) -> str:
  """A summary line (layer count, mean and worst SQNR), then the markdown table of `layer_table` rows."""
  key = "output_sqnr_db" if any("output_sqnr_db" in r for r in rows) else "weight_sqnr_db"
  measured = [r for r in rows if key in r]
  worst = min(measured, key=lambda r: r[key]) if measured else None
  head = (f"{len(rows)} quantized tensors, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB; {key[:-8]} SQNR mean "
          f"{np.mean([r[key] for r in measured]):.2f} dB over {len(measured)}, worst {worst['layer']} "
          f"{worst[key]:.2f} dB" if worst else "no quantized tensors")
  lines = [head, "| layer | qtype | weight SQNR dB | output SQNR dB | KiB |", "|---|---|---|---|---|"]
  lines += [f"| {r['layer']} | {r['qtype']} | {r['weight_sqnr_db']:.2f} | {r.get('output_sqnr_db', float('nan')):.2f} "
            f"| {r['bytes'] / 1024:.1f} |" for r in rows]
  return "\n".join(lines)


def _subtree(tree, path: str):
  for k in path.split("/"):
    tree = tree[k]
  return tree


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
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  vals = [r.get("output_sqnr_db", r["weight_sqnr_db"]) for r in rows]
  fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(rows))))
  ax.barh(range(len(rows)), vals)
  ax.set_yticks(range(len(rows)), [r["layer"] for r in rows], fontsize=6)
  ax.invert_yaxis()
  ax.set_xlabel("output SQNR (dB), worst first")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(args: argparse.Namespace) -> int:
  if args.samples < 1:
    raise ValueError(f"--samples {args.samples}: need at least 1 calibration window/paragraph for output errors.")
  if args.budget_mb is not None and not args.budget_mb > 0:   # also NaN
    raise ValueError(f"--budget-mb {args.budget_mb}: the size budget must be a positive number of MiB.")
  kind, model, qparams, meta = common.load_checkpoint(args.dir)
  _, params = common.load_model(meta.get("model", kind.name))
  batches = kind.calibration_batches(model, num=args.samples, seed=1)
  inputs = capture_linear_inputs(model, params, batches)
  rows = layer_table(params, qparams, inputs)
  print(format_table(rows))
  out = Path(args.dir)
  plot(rows, out / "layers.png")
  (out / "layers.json").write_text(json.dumps(rows, indent=2))
  if args.budget_mb is not None:
    keep = suggest_8bit(rows, args.budget_mb * 2**20)
    print(f"keep at 8 bit within {args.budget_mb} MiB: {keep if keep else 'none fits'}")
  common.log(f"wrote {out / 'layers.png'} and {out / 'layers.json'}")
  return 0
