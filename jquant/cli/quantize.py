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
  parser.add_argument("--out", required=True, metavar="DIR",
                      help="checkpoint folder to write (must be empty or absent unless --overwrite)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --out folder as a whole (no stale files from the old checkpoint)")


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


def check_args(args: argparse.Namespace) -> None:
  """Argument checks that need no model: run before any work (loading, calibration)."""
  common.check_output_dir(args.out, overwrite=getattr(args, "overwrite", False))
  if args.calib_samples is not None and args.calib_samples < 1:
    raise ValueError(f"--calib-samples {args.calib_samples}: calibration needs at least 1 sample; omit the flag for "
                     "the default (smollm2: 32 windows, minilm: 256 paragraphs).")
  if args.calib_text is not None and not Path(args.calib_text).is_file():
    raise ValueError(f"--calib-text {args.calib_text!r} is not a file; give a UTF-8 text file.")


def run(args: argparse.Namespace) -> int:
  check_args(args)
  _, _, qparams, report, meta = quantize_real(args.model, args.method, args.bits, args.group_size, args.act_order,
                                              args.calib_text, args.calib_samples, grid=args.grid)
  out = common.save_checkpoint(args.out, qparams, meta, overwrite=args.overwrite,
                               files={"report.txt": str(report)})
  print(f"saved {out} ({common.params_nbytes(qparams) / 2**20:.1f} MiB, {meta['quantize_seconds']:.1f} s)")
  return 0
