"""``python -m jquant report DIR [--recompute] [--budget-mb MB]``: per-layer quality of a quantized checkpoint.

``quantize`` stores its per-layer report in the checkpoint: ``report.json`` (the rows of `jquant.report.layer_rows`:
weight SQNR, the pipeline's output SQNR on its calibration inputs, loss, time) and, for AWQ / SmoothQuant,
``report.safetensors`` (the scales each layer's input / output was divided by, `jquant.report.LayerReport`).
``report DIR`` prints that table (worst first) and plots it to ``DIR/layers.png``. ``--recompute`` (and a checkpoint
without report.json) runs the checkpoint's own runtime -- the loaded model with its quantized params, input scales,
folded norms, biases and run-time matmul -- on calibration samples and measures each layer's output against the
float layer (`jquant.ptq.layer_errors`). With ``--budget-mb`` it suggests which layers to keep at 8 bit: greedily the
worst layers, while the total weight size stays within the budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jquant.cli import common

NAME = "report"
HELP = "per-layer SQNR / output error of a quantized checkpoint (+ PNG, + a mixed-bit suggestion)"
EPILOG = """examples:
  python -m jquant report q/                     # the per-layer table quantize stored, worst first (+ q/layers.png)
  python -m jquant report q/ --recompute         # measure the checkpoint's runtime on calibration samples instead
  python -m jquant report q/ --budget-mb 80      # which layers to keep at 8 bit within 80 MiB of weights
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("dir", metavar="DIR", help="checkpoint folder written by `python -m jquant quantize`")
  parser.add_argument("--recompute", action="store_true",
                      help="run the checkpoint's runtime on calibration samples and measure every layer's output "
                           "against the float layer (default: show the report quantize stored)")
  parser.add_argument("--budget-mb", type=float, default=None,
                      help="suggest layers to keep at 8 bit within this total weight size (MiB)")
  parser.add_argument("--samples", type=int, default=8,
                      help="--recompute: calibration windows (smollm2) / paragraphs (minilm)")


def stored_files(rows: list[dict], summary: str, divisors: dict[str, dict]) -> tuple[dict, dict]:
  """(``files``, ``tensors``) of `common.save_checkpoint` holding a report: report.json (+ report.safetensors with
  the folded scales, nested by layer path)."""
  from jquant.core.paths import unflatten  # pylint: disable=import-outside-toplevel
  nested = unflatten({f"{layer}/{k}": np.asarray(v, np.float32) for layer, divs in divisors.items()
                      for k, v in divs.items()})
  files = {"report.json": json.dumps({"summary": summary, "rows": rows}, indent=1, allow_nan=True)}
  return files, ({"report.safetensors": nested} if nested else {})


def read_stored(path: Path) -> tuple[dict | None, dict[str, dict]]:
  """(report.json's content or None, ``{layer: {"in_div", "out_div"}}``) of a checkpoint folder."""
  import jquant as jq  # pylint: disable=import-outside-toplevel
  f = path / "report.json"
  stored = None
  if f.is_file():
    try:
      stored = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{f}: invalid JSON ({e}); rerun with --recompute or re-run quantize.") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("rows"), list):
      raise ValueError(f"{f}: expected {{'summary': ..., 'rows': [...]}}; rerun with --recompute or re-run quantize.")
  divisors: dict[str, dict] = {}
  if (path / "report.safetensors").is_file():
    from jquant.core.paths import flatten  # pylint: disable=import-outside-toplevel
    for p, v in flatten(jq.io.load_safetensors(path / "report.safetensors")).items():
      layer, key = p.rsplit("/", 1)
      divisors.setdefault(layer, {})[key] = np.asarray(v)
  return stored, divisors


def recompute(path: Path, kind, model, qparams, meta: dict, divisors: dict, samples: int) -> list[dict]:
  """Rows measured on the checkpoint's runtime (module docstring)."""
  from jquant.ptq.layer_errors import layer_errors  # pylint: disable=import-outside-toplevel
  from jquant.report import layer_rows  # pylint: disable=import-outside-toplevel
  fmodel, params = common.load_model(meta.get("model", kind.name))
  if common.runtime_of(meta).get("rotate"):     # quantize rotated the float model with seed 0: the same reference
    from jquant.models.rotation import rotate  # pylint: disable=import-outside-toplevel
    _, params = rotate(fmodel, params, seed=0)
  if not divisors and meta.get("method") in ("awq", "smoothquant"):
    common.log(f"note: {path} records no folded scales (written before report.safetensors): layers whose scales "
               "AWQ / SmoothQuant folded into a norm or a previous linear compare in scaled coordinates")
  common.log(f"running the checkpoint's runtime on {samples} calibration {kind.sample_unit}")
  batches = kind.calibration_batches(model, calib_text=meta.get("calib_text"), num=samples, seed=1)
  return layer_rows(params, qparams, output_sqnr=layer_errors(model, params, qparams, batches, divisors),
                    divisors=divisors)


def run(args: argparse.Namespace) -> int:
  from jquant.report import format_table, plot, suggest_8bit  # pylint: disable=import-outside-toplevel
  if args.samples < 1:
    raise ValueError(f"--samples {args.samples}: need at least 1 calibration window/paragraph for output errors.")
  if args.budget_mb is not None and not args.budget_mb > 0:   # also NaN
    raise ValueError(f"--budget-mb {args.budget_mb}: the size budget must be a positive number of MiB.")
  kind, model, qparams, meta = common.load_checkpoint(args.dir)
  out = Path(args.dir)
  stored, divisors = read_stored(out)
  if args.recompute or stored is None:
    if stored is None:
      common.log(f"{out} has no report.json (written before quantize stored its report): recomputing")
    rows = recompute(out, kind, model, qparams, meta, divisors, args.samples)
  else:
    rows = stored["rows"]
    print(f"stored by quantize: {stored.get('summary', '')}")
  print(format_table(rows))
  plot(rows, out / "layers.png")
  (out / "layers.json").write_text(json.dumps(rows, indent=2))
  if args.budget_mb is not None:
    keep = suggest_8bit(rows, args.budget_mb * 2**20)
    print(f"keep at 8 bit within {args.budget_mb} MiB: {keep if keep else 'none fits'}")
  common.log(f"wrote {out / 'layers.png'} and {out / 'layers.json'}")
  return 0
