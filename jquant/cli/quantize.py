"""``python -m jquant quantize --model M --method X --bits B --group-size G [--act-order] --out DIR``.

Flow: load the model; data-free methods (``common.DATA_FREE``: RTN) quantize every block linear directly, the others
run the calibrated block-by-block pipeline (`jquant.ptq.quantize_model`, a progress bar with an ETA on stderr); the
token embedding (SmolLM2: also the tied LM head) is quantized by ``--embedding`` (int8 per row by default); the
checkpoint folder is written; stdout gets where it went and the commands to try next.

The per-layer report goes to ``DIR/report.txt`` and ``report.json`` (+ ``report.safetensors``: the scales AWQ /
SmoothQuant folded; ``python -m jquant report DIR`` shows it): the pipeline's own report for calibrated methods; for
data-free ones the weight SQNR of every layer (no data), or with ``--report`` also the output SQNR on a small
calibration sample.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jquant.cli import common

NAME = "quantize"
HELP = "quantize a real model with RTN/GPTQ/AWQ/SmoothQuant/LLM.int8 and save a checkpoint folder"
EPILOG = """examples:
  python -m jquant quantize --model smollm2 --method rtn --bits 4 --out q-rtn/        # seconds, no data
  python -m jquant quantize --model smollm2 --method gptq --bits 4 --group-size 64 --act-order --grid mse --out q/
  python -m jquant quantize --model minilm --method awq --bits 4 --embedding int4 --out q-minilm/
  python -m jquant quantize --model smollm2 --method rtn --format mxfp8 --act-format mxfp8 --out q-w8a8-mx/
"""

def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True, metavar="NAME|PATH",
                      help="smollm2, minilm, or a Hugging Face model folder (Llama-family or BERT)")
  parser.add_argument("--method", required=True, choices=common.METHODS)
  parser.add_argument("--bits", type=int, default=4, choices=(8, 4, 3, 2))
  parser.add_argument("--group-size", type=int, default=None,
                      help="group size along the input axis (default: 64 for smollm2, 128 for minilm; -1 = per channel)")
  parser.add_argument("--act-order", action="store_true", help="GPTQ: quantize columns in decreasing Hessian order")
  parser.add_argument("--format", default="int", choices=common.FORMATS,
                      help="weight number format: int (--bits/--group-size grid) or a microscaling format "
                           "(mxfp8: E4M3 + E8M0 scales per 32; mxfp4: E2M1 + E8M0 per 32; nvfp4: E2M1 + E4M3 per 16 "
                           "and a per-tensor scale); rtn/gptq only")
  parser.add_argument("--grid", default="minmax", choices=common.GRIDS,
                      help="4/3/2-bit group ranges: min/max (default), an MSE search over shrink factors, or that search "
                           "weighted by the inputs' second moments (imatrix; rtn and gptq)")
  parser.add_argument("--embedding", default="int8", choices=common.EMBEDDINGS,
                      help="the token embedding (smollm2: also the tied LM head): int8 per row (default), int4 "
                           "groups of 64, or float")
  parser.add_argument("--report", action="store_true",
                      help=f"data-free methods ({', '.join(common.DATA_FREE)}): also measure each layer's output "
                           "SQNR on a small calibration sample (default: weight SQNR only, no data)")
  parser.add_argument("--rotate", action="store_true",
                      help="Hadamard rotations first: smollm2 / Llama: randomized QuaRot R1, R2 + online R4; minilm / BERT: "
                           "an online Hadamard on every encoder linear's input")
  parser.add_argument("--act-bits", type=int, default=None, choices=(8, 4),
                      help="also quantize activations per token at run time (W4A8 / W4A4; weight-only methods)")
  parser.add_argument("--act-format", default=None, choices=common.FORMATS[1:],
                      help="also quantize activations at run time in a microscaling format, per block along the "
                           "features (W8A8 mxfp8, W4A4 mxfp4 / nvfp4; pair with the same --format)")
  parser.add_argument("--calib-text", default=None, metavar="PATH", help="calibration text (default: other plays)")
  parser.add_argument("--calib-samples", type=int, default=None,
                      help="calibration windows (smollm2, default 32) or paragraphs (minilm, default 256)")
  parser.add_argument("--out", required=True, metavar="DIR",
                      help="checkpoint folder to write (must be empty or absent unless --overwrite)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --out folder as a whole (no stale files from the old checkpoint)")


def quantize_real(model_name: str, method_name: str, bits: int, group_size: int | None, act_order: bool = False,
                  calib_text: str | None = None, calib_samples: int | None = None, progress: bool = True,
                  grid: str = "minmax", embedding: str = "int8", report: bool = False, fmt: str = "int",
                  rotate: bool = False, act_bits: int | None = None, act_format: str | None = None):
  """Loads the model and quantizes it (calibrating only when the method needs data, or ``report`` asks for the
  output SQNR of a data-free method). Returns (model, params, qparams, (report text, rows, divisors), meta)."""
  from jquant import ptq  # pylint: disable=import-outside-toplevel
  kind = common.model_kind(model_name)
  if kind.name != model_name:
    model_name = str(Path(model_name).resolve())
  if fmt != "int":   # the format fixes the block and the bits
    qt = common.format_spec(fmt).qtype
    group_size, bits = qt.block_size, qt.bits
  elif group_size is None:
    group_size = kind.default_group
  method = common.with_act_bits(common.build_method(method_name, bits, group_size, act_order, grid, fmt), act_bits,
                                act_format)
  common.embedding_spec(embedding)     # validate before the load
  t_load = time.perf_counter()
  model, params = common.load_model(model_name)
  common.log(f"loaded {model_name} in {time.perf_counter() - t_load:.1f} s")
  if rotate:
    from jquant.models.rotation import rotate as rotate_model  # pylint: disable=import-outside-toplevel
    model, params = rotate_model(model, params, seed=0)
  t0 = time.perf_counter()
  data_free = method_name in common.DATA_FREE and grid != "imatrix"     # the imatrix search needs calibration
  if data_free:
    qparams, ptq_report = common.quantize_data_free(model, params, method), None
  else:
    batches = kind.calibration_batches(model, calib_text=calib_text, num=calib_samples)
    qparams, ptq_report = ptq.quantize_model(model, params, batches, method, progress=progress)
  qparams = common.quantize_embedding(kind, qparams, params, embedding)
  seconds = time.perf_counter() - t0
  stored = _report(kind, model, params, qparams, method, ptq_report, calib_text, report)
  meta = {"model": model_name, "kind": kind.name, "method": method_name, "bits": bits, "group_size": group_size,
          "act_order": act_order, "grid": grid, "embedding": embedding, "format": fmt, "quantize_seconds": seconds,
          "rotate": rotate, "act_bits": act_bits, "act_format": act_format,
          "runtime": common.runtime_record(method, rotate),
          "calib_text": None if calib_text is None else str(Path(calib_text).resolve())}
  return model, params, qparams, stored, meta


def _report(kind, model, params, qparams, method, ptq_report=None, calib_text=None, with_outputs: bool = False):
  """(report.txt text, `jquant.report.layer_rows` rows, folded scales) of a quantization: the pipeline's per-layer
  report with the weight SQNR beside it; for a data-free method the weight SQNR alone (no data), or with
  ``with_outputs`` also each layer's output SQNR in its runtime on a few calibration samples."""
  from jquant.report import format_table, layer_rows  # pylint: disable=import-outside-toplevel
  if ptq_report is not None:
    div = ptq_report.divisors()
    rows = layer_rows(params, qparams, output_sqnr={e.path: e.sqnr_db for e in ptq_report.layers}, divisors=div,
                      extra={e.path: {"loss": e.loss, "seconds": e.seconds} for e in ptq_report.layers})
    return str(ptq_report), rows, div
  out = None
  if with_outputs:
    from jquant.ptq.layer_errors import layer_errors  # pylint: disable=import-outside-toplevel
    n = kind.report_samples
    common.log(f"--report: measuring layer outputs on {n} calibration {kind.sample_unit}")
    batches = kind.calibration_batches(model, calib_text=calib_text, num=n, seed=1)
    out = layer_errors(common.with_matmul(model, method.matmul), params, qparams, batches)
  rows = layer_rows(params, qparams, output_sqnr=out)
  return format_table(rows), rows, {}


def check_args(args: argparse.Namespace) -> None:
  """Argument checks that need no model: run before any work (loading, calibration)."""
  common.check_output_dir(args.out, overwrite=getattr(args, "overwrite", False))
  if args.calib_samples is not None and args.calib_samples < 1:
    raise ValueError(f"--calib-samples {args.calib_samples}: calibration needs at least 1 sample; omit the flag for "
                     "the default (smollm2: 32 windows, minilm: 256 paragraphs).")
  if args.calib_text is not None and not Path(args.calib_text).is_file():
    raise ValueError(f"--calib-text {args.calib_text!r} is not a file; give a UTF-8 text file.")


def next_commands(out: Path) -> str:
  """What to run on a fresh checkpoint folder."""
  return (f"next:\n  python -m jquant eval {out}              # quality (SmolLM2: Hamlet ppl; MiniLM: cosine to fp32)\n"
          f"  python -m jquant report {out}            # per-layer SQNR table + PNG (+ --budget-mb MB)\n"
          f"  python -m jquant export {out} --format compressed-tensors --out {out}-hf   # transformers / vLLM")


def run(args: argparse.Namespace) -> int:
  check_args(args)
  from jquant.cli import report as report_cli  # pylint: disable=import-outside-toplevel
  _, _, qparams, (text, rows, divisors), meta = quantize_real(
      args.model, args.method, args.bits, args.group_size, args.act_order, args.calib_text, args.calib_samples,
      grid=args.grid, embedding=args.embedding, report=args.report, fmt=args.format, rotate=args.rotate,
      act_bits=args.act_bits, act_format=args.act_format)
  files, tensors = report_cli.stored_files(rows, text.splitlines()[0] if text else "", divisors)
  out = common.save_checkpoint(args.out, qparams, meta, overwrite=args.overwrite,
                               files={"report.txt": text, **files}, tensors=tensors)
  summary = text.splitlines()[0] if text else ""
  print(summary)
  print(f"wrote {out}/ (params.safetensors {common.params_nbytes(qparams) / 2**20:.1f} MiB of weights, meta.json, "
        f"report.txt/.json) in {meta['quantize_seconds']:.1f} s")
  print(next_commands(out))
  return 0
