"""``python -m jquant quantize --model M --method X --bits B --group-size G [--act-order] --out DIR``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jquant.cli import common

NAME = "quantize"
HELP = "quantize a real model with RTN/GPTQ/AWQ/SmoothQuant/LLM.int8 and save a checkpoint folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True, metavar="NAME|PATH",
                      help="smollm2, minilm, or a Hugging Face model folder (Llama-family or BERT)")
  parser.add_argument("--method", required=True, choices=common.METHODS)
  parser.add_argument("--bits", type=int, default=4, choices=(8, 4, 3, 2))
  parser.add_argument("--group-size", type=int, default=None,
                      help="group size along the input axis (default: 64 for smollm2, 128 for minilm; -1 = per channel)")
  parser.add_argument("--act-order", action="store_true", help="GPTQ: quantize columns in decreasing Hessian order")
  parser.add_argument("--grid", default="minmax", choices=common.GRIDS,
                      help="4/3/2-bit group ranges: min/max (default) or an MSE search over shrink factors")
  parser.add_argument("--calib-text", default=None, metavar="PATH", help="calibration text (default: other plays)")
  parser.add_argument("--calib-samples", type=int, default=None,
                      help="calibration windows (smollm2, default 32) or paragraphs (minilm, default 256)")
  parser.add_argument("--out", required=True, metavar="DIR")


def quantize_real(model_name: str, method_name: str, bits: int, group_size: int | None, act_order: bool = False,
                  calib_text: str | None = None, calib_samples: int | None = None, progress: bool = True,
                  grid: str = "minmax"):
  """Loads the model, calibrates and quantizes it. Returns (model, qparams, report, meta, seconds)."""
  from jquant import ptq  # pylint: disable=import-outside-toplevel
  family = common.model_family(model_name)
  if family != model_name:
    model_name = str(Path(model_name).resolve())
  if group_size is None:
    group_size = common.DEFAULT_GROUP[family]
  method = common.build_method(method_name, bits, group_size, act_order, grid)
  model, params = common.load_model(model_name)
  batches = common.calibration_batches(family, model, calib_text=calib_text, num=calib_samples)
  t0 = time.perf_counter()
  qparams, report = ptq.quantize_model(model, params, batches, method, progress=progress)
  seconds = time.perf_counter() - t0
  meta = {"model": model_name, "method": method_name, "bits": bits, "group_size": group_size,
          "act_order": act_order, "grid": grid, "quantize_seconds": seconds}
  return model, params, qparams, report, meta


def run(args: argparse.Namespace) -> int:
  _, _, qparams, report, meta = quantize_real(args.model, args.method, args.bits, args.group_size, args.act_order,
                                              args.calib_text, args.calib_samples, grid=args.grid)
  out = common.save_checkpoint(args.out, qparams, meta)
  (out / "report.txt").write_text(str(report))
  print(f"saved {out} ({common.params_nbytes(qparams) / 2**20:.1f} MiB, {meta['quantize_seconds']:.1f} s)")
  return 0
