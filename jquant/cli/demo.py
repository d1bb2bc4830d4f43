"""``python -m jquant demo [--model smollm2|minilm]``: the main job on a real model (what `make demo` runs).

Loads the model, quantizes it with every method of ``CONFIGS`` (RTN, GPTQ, AWQ at w4 and w3, group 64 for SmolLM2 /
128 for MiniLM; RTN w8, SmoothQuant W8A8, LLM.int8; GPTQ w4 on the importance-weighted imatrix grid; with
``--extended`` also imatrix w3, HQQ, 2-bit RTN / GPTQ / HQQ and Hadamard-rotated GPTQ w4 / w3 rows; AutoRound is
left out: 200 sign-SGD steps per block take far longer than the demo on a CPU), quantizes the token embedding (SmolLM2: also the tied LM head)
to int8 per row (``--embedding``), evaluates each (SmolLM2: Hamlet perplexity; MiniLM: embedding cosine to fp32)
and prints a table: method, bits, embedding, bytes of weights stored and their ratio to bf16, quality, quantization
time. One row repeats GPTQ w4 with a float embedding: the cost of quantizing the embedding. Writes ``table.md``,
``results.json`` and ``quality_vs_size.png`` to ``--out``.

To add a method row, append a `Config` to ``CONFIGS`` (``options`` passes extra keyword arguments to
`jquant.cli.common.build_method`); nothing else changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from jquant.cli import common, demo_plot

NAME = "demo"
HELP = "quantize a real model with every method and print a quality/size/time table (+ PNG, markdown, JSON)"
EPILOG = """examples:
  python -m jquant demo                                  # SmolLM2-135M, every method (what `make demo` runs)
  python -m jquant demo --model minilm --methods rtn,gptq --out demo_minilm/
  python -m jquant demo --embedding int4 --windows 4     # 4-bit embedding / LM head, faster evaluation
"""


@dataclasses.dataclass(frozen=True)
class Config:
  """One quantization of the demo.

  Attributes:
    label: the table's method name.
    method: a `common.METHODS` name.
    bits: weight bits (group size: the model's default below 8 bits, per channel at 8).
    act_order, grid: as ``python -m jquant quantize``.
    float_embedding_row: also evaluate the same quantized linears with the float embedding (its own table row:
      what quantizing the embedding costs).
    options: extra ``(name, value)`` keyword arguments for `common.build_method`.
    extended: only with ``--extended`` (the imatrix, HQQ and 2-bit rows: each GPTQ row costs minutes on a CPU, and
      the default demo keeps to its time budget).
    rotate: quantize the Hadamard-rotated model (`jquant.models.rotation`, seed 0; the same float function).
  """

  label: str
  method: str
  bits: int
  act_order: bool = False
  grid: str = "minmax"
  float_embedding_row: bool = False
  options: tuple = ()
  extended: bool = False
  rotate: bool = False


# RTN on the plain min/max grid (the EVAL.md baselines); GPTQ with act-order and the MSE-searched group ranges; AWQ
# with its own scale + clip search; SmoothQuant as `common.build_method` builds it (smooth="all" + GPTQ on INT8).
CONFIGS: tuple[Config, ...] = (
    Config("RTN", "rtn", 8),
    Config("SmoothQuant W8A8 (+GPTQ)", "smoothquant", 8),
    Config("LLM.int8", "llm_int8", 8),
    Config("RTN", "rtn", 4),
    Config("GPTQ (act-order, MSE grid)", "gptq", 4, act_order=True, grid="mse", float_embedding_row=True),
    Config("AWQ", "awq", 4),
    Config("RTN", "rtn", 3),
    Config("GPTQ (act-order, MSE grid)", "gptq", 3, act_order=True, grid="mse"),
    Config("AWQ", "awq", 3),
    Config("GPTQ (act-order, imatrix grid)", "gptq", 4, act_order=True, grid="imatrix"),
    Config("GPTQ (act-order, imatrix grid)", "gptq", 3, act_order=True, grid="imatrix", extended=True),
    Config("HQQ", "hqq", 4, extended=True),
    Config("RTN", "rtn", 2, extended=True),
    Config("GPTQ (act-order, MSE grid)", "gptq", 2, act_order=True, grid="mse", extended=True),
    Config("GPTQ (act-order, imatrix grid)", "gptq", 2, act_order=True, grid="imatrix", extended=True),
    Config("HQQ", "hqq", 2, extended=True),
    Config("GPTQ rotated (act-order, MSE grid)", "gptq", 4, act_order=True, grid="mse", extended=True, rotate=True),
    Config("GPTQ rotated (act-order, imatrix grid)", "gptq", 3, act_order=True, grid="imatrix", extended=True,
           rotate=True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", default="smollm2", choices=common.MODELS)
  parser.add_argument("--out", default="demo_out", metavar="DIR")
  parser.add_argument("--methods", default=None,
                      help=f"comma-separated subset of methods to run ({','.join(common.METHODS)})")
  parser.add_argument("--extended", action="store_true",
                      help="also run the extended rows (GPTQ imatrix w3, HQQ, every 2-bit row, rotated GPTQ w4 / w3): "
                           "several more "
                           "minutes per row on a CPU")
  parser.add_argument("--embedding", default="int8", choices=common.EMBEDDINGS,
                      help="the token embedding (smollm2: also the tied LM head) of every quantized row: int8 per row "
                           "(default), int4 groups of 64, or float")
  parser.add_argument("--calib-samples", type=int, default=None,
                      help="calibration windows of 512 tokens (smollm2, default 16) / paragraphs (minilm, default "
                           "128); the quantize command defaults to 32 / 256 as in the GPTQ reference")
  parser.add_argument("--windows", type=int, default=8, help="SmolLM2 eval windows of 512 tokens (default 8)")


def _check(args: argparse.Namespace) -> set | None:
  wanted = None if args.methods is None else set(args.methods.split(","))
  if wanted is not None and not wanted <= set(common.METHODS):
    raise ValueError(f"--methods {args.methods!r}: unknown {sorted(wanted - set(common.METHODS))}; "
                     f"choose from {common.METHODS}.")
  if args.windows < 1:
    raise ValueError(f"--windows {args.windows}: evaluate on at least 1 window of 512 tokens.")
  if args.calib_samples is not None and args.calib_samples < 1:
    raise ValueError(f"--calib-samples {args.calib_samples}: calibration needs at least 1 sample; omit the flag for "
                     "the demo default.")
  return wanted


def run(args: argparse.Namespace) -> int:
  wanted = _check(args)
  kind = common.model_kind(args.model)
  name = kind.name
  group = kind.default_group
  configs = [c for c in CONFIGS if (wanted is None or c.method in wanted) and (args.extended or not c.extended)]
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  common.log(f"loading {name}")
  model, params = common.load_model(name)
  bf16 = common.bf16_nbytes(params)
  batches = None
  if any(c.method not in common.DATA_FREE or c.grid == "imatrix" for c in configs):
    batches = kind.calibration_batches(model, num=args.calib_samples or kind.demo_samples)
  common.log("evaluating the fp32 reference")
  evaluate = kind.evaluator(model, params if kind.vs_float else None, None, args.windows, 512)
  rows = [_row("fp32 (reference)", 32, None, "float", params, bf16, evaluate(model, params), 0.0)]
  rotated = {}
  for n, c in enumerate(configs, 1):
    g = group if c.bits < 8 else None
    method = common.build_method(c.method, c.bits, g, c.act_order, c.grid, **dict(c.options))
    common.log(f"[{n}/{len(configs)}, {time.perf_counter() - t_start:.0f} s so far] {c.label} "
               f"w{c.bits}{f' g{g}' if g else ''}: quantizing")
    t0 = time.perf_counter()
    m, p, lin = quantize_config(c, method, model, params, batches, rotated)
    qparams = common.quantize_embedding(kind, lin, p, args.embedding)
    seconds = time.perf_counter() - t0
    qmodel = common.with_matmul(m, getattr(method, "matmul", None))
    rows.append(_row(c.label, c.bits, g, args.embedding, qparams, bf16, evaluate(qmodel, qparams), seconds))
    common.log(f"  -> {_quality_str(kind, rows[-1])}, {rows[-1]['size_mb']:.1f} MB, {seconds:.1f} s")
    if c.float_embedding_row and args.embedding != "float":
      rows.append(_row(c.label, c.bits, g, "float", lin, bf16, evaluate(qmodel, lin), seconds))
      common.log(f"  -> with a float embedding: {_quality_str(kind, rows[-1])}, {rows[-1]['size_mb']:.1f} MB")
  table = _table(kind, rows)
  print(table)
  (out / "table.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps({"model": name, "bf16_mb": bf16 / 2**20, "rows": rows}, indent=2))
  demo_plot.save(name, rows, out / "quality_vs_size.png")
  common.log(f"wrote {out}/table.md, results.json, quality_vs_size.png ({time.perf_counter() - t_start:.0f} s)")
  print(f"\nnext: python -m jquant quantize --model {name} --method gptq --bits 4 --act-order --grid mse --out q/"
        f"\n      python -m jquant eval q/   |   python -m jquant report q/   |   python -m jquant --help")
  return 0


def quantize_config(c: Config, method, model, params, batches, rotated: dict):
  """(model, float params, params with the block linears quantized) of one row: the Hadamard-rotated model when
  ``c.rotate`` (rotated once and kept in ``rotated``), the data-free path for data-free methods."""
  from jquant import ptq  # pylint: disable=import-outside-toplevel
  if c.rotate and not rotated:
    from jquant.models.rotation import rotate  # pylint: disable=import-outside-toplevel
    rotated["model"], rotated["params"] = rotate(model, params, seed=0)
  m, p = (rotated["model"], rotated["params"]) if c.rotate else (model, params)
  if c.method in common.DATA_FREE and c.grid != "imatrix":   # no calibration: linears quantized directly
    return m, p, common.quantize_data_free(m, p, method)
  return m, p, ptq.quantize_model(m, p, batches, method, progress=True)[0]


def _row(label, bits, group, embedding, qparams, bf16, quality, seconds) -> dict:
  nbytes = common.params_nbytes(qparams)
  return {"method": label, "bits": bits, "group_size": group, "embedding": embedding, "size_mb": nbytes / 2**20,
          "vs_bf16": nbytes / bf16, **quality, "seconds": seconds}


def _quality_str(kind, row) -> str:
  return kind.format_metrics({kind.metric: row[kind.metric]})[0]


def _table(kind, rows) -> str:
  """Markdown: each row's settings and sizes, then the kind's quality columns."""
  cols = [(k, fmt, col) for k, fmt, col in kind.metrics if col is not None]
  head = ("| method | bits | group | embedding | weights (MB) | vs bf16 | " + " | ".join(c for _, _, c in cols) +
          " | quantize time (s) |\n" + "|---" * (8 + len(cols)) + "|")
  body = [f"| {r['method']} | {r['bits']} | {r.get('group_size') or '-'} | {r['embedding']} | {r['size_mb']:.1f} | "
          f"{r['vs_bf16']:.3f}x | " + " | ".join(f"{r[k]:{fmt}}" for k, fmt, _ in cols) + f" | {r['seconds']:.1f} |"
          for r in rows]
  return "\n".join([head] + body)
