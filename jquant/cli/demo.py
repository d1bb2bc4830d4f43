"""``python -m jquant demo [--model smollm2|minilm]``: the main job on a real model (what `make demo` runs).

Loads the model, quantizes it with RTN, GPTQ, AWQ (w4 and w3, group 64 for SmolLM2 / 128 for MiniLM), RTN w8,
SmoothQuant W8A8 and LLM.int8, evaluates each (SmolLM2: Hamlet perplexity; MiniLM: embedding cosine to fp32),
and prints a table: method, bits, model size, quality, quantization time. Writes ``table.md``, ``results.json``
and ``quality_vs_size.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jquant.cli import common

NAME = "demo"
HELP = "quantize a real model with every method and print a quality/size/time table (+ PNG, markdown, JSON)"

# (label, method, bits, act_order, grid): RTN on the plain min/max grid (the EVAL.md baselines); GPTQ with
# act-order and the MSE-searched group ranges; AWQ with its own scale + clip search; SmoothQuant as
# `common.build_method` builds it (smooth="all" + GPTQ on the INT8 weights).
CONFIGS = (
    ("RTN", "rtn", 8, False, "minmax"),
    ("SmoothQuant W8A8 (+GPTQ)", "smoothquant", 8, False, "minmax"),
    ("LLM.int8", "llm_int8", 8, False, "minmax"),
    ("RTN", "rtn", 4, False, "minmax"),
    ("GPTQ (act-order, MSE grid)", "gptq", 4, True, "mse"),
    ("AWQ", "awq", 4, False, "minmax"),
    ("RTN", "rtn", 3, False, "minmax"),
    ("GPTQ (act-order, MSE grid)", "gptq", 3, True, "mse"),
    ("AWQ", "awq", 3, False, "minmax"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", default="smollm2", choices=common.MODELS)
  parser.add_argument("--out", default="demo_out", metavar="DIR")
  parser.add_argument("--methods", default=None,
                      help="comma-separated subset of methods to run (rtn,gptq,awq,smoothquant,llm_int8)")
  parser.add_argument("--calib-samples", type=int, default=None,
                      help="calibration windows of 512 tokens (smollm2, default 16) / paragraphs (minilm, default "
                           "128); the quantize command defaults to 32 / 256 as in the GPTQ reference")
  parser.add_argument("--windows", type=int, default=8, help="SmolLM2 eval windows of 512 tokens (default 8)")


def _with_matmul(model, matmul):
  return model if matmul is None else type(model)(model.config, matmul=matmul, tokenizer=model.tokenizer)


def run(args: argparse.Namespace) -> int:
  from jquant import assets, ptq  # pylint: disable=import-outside-toplevel
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel

  name = args.model
  group = common.DEFAULT_GROUP[name]
  wanted = None if args.methods is None else set(args.methods.split(","))
  if wanted is not None and not wanted <= set(common.METHODS):
    raise ValueError(f"--methods {args.methods!r}: unknown {sorted(wanted - set(common.METHODS))}; "
                     f"choose from {common.METHODS}.")
  if args.windows < 1:
    raise ValueError(f"--windows {args.windows}: evaluate on at least 1 window of 512 tokens.")
  if args.calib_samples is not None and args.calib_samples < 1:
    raise ValueError(f"--calib-samples {args.calib_samples}: calibration needs at least 1 sample; omit the flag for "
                     "the demo default.")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  common.log(f"loading {name}")
  model, params = common.load_model(name)
  fp_bytes = common.params_nbytes(params)
  num = args.calib_samples or {"smollm2": 16, "minilm": 128}[name]   # demo: half the reference data, for time
  batches = common.calibration_batches(name, model, num=num)
  common.log("evaluating the fp32 reference")
  ref_emb = None
  if name == "minilm":
    text = jeval.paragraphs(assets.shakespeare_text("hamlet"), n=512)
    ref_emb = jeval.embed_texts(model, params, text)
  rows = [{"method": "fp32 (reference)", "bits": 32, "size_mb": fp_bytes / 2**20,
           **common.evaluate(name, model, params, windows=args.windows, ref_embeddings=ref_emb), "seconds": 0.0}]
  for label, method_name, bits, act_order, grid in CONFIGS:
    if wanted is not None and method_name not in wanted:
      continue
    g = group if bits < 8 else None
    method = common.build_method(method_name, bits, g, act_order, grid)
    common.log(f"{label} w{bits}{f' g{g}' if g else ''}: quantizing")
    t0 = time.perf_counter()
    if method_name == "rtn":   # no calibration needed: quantize every linear kernel directly
      import jquant as jq  # pylint: disable=import-outside-toplevel
      cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*/kernel", method.spec)])
      qparams = jq.quantize_params(params, cfg)
    else:
      qparams, _ = ptq.quantize_model(model, params, batches, method, progress=True)
    seconds = time.perf_counter() - t0
    qmodel = _with_matmul(model, getattr(method, "matmul", None))
    quality = common.evaluate(name, qmodel, qparams, windows=args.windows, ref_embeddings=ref_emb)
    row = {"method": label, "bits": bits, "group_size": g,
           "size_mb": common.params_nbytes(qparams) / 2**20, **quality, "seconds": seconds}
    rows.append(row)
    common.log(f"  -> {_quality_str(row)}, {row['size_mb']:.1f} MB, {seconds:.1f} s")
  table = _table(name, rows)
  print(table)
  (out / "table.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps({"model": name, "rows": rows}, indent=2))
  _plot(name, rows, out / "quality_vs_size.png")
  common.log(f"wrote {out}/table.md, results.json, quality_vs_size.png")
  return 0


def _quality_str(row) -> str:
  return f"ppl {row['ppl']:.2f}" if "ppl" in row else f"mean cos {row['mean_cos']:.4f}"


def _table(name: str, rows) -> str:
  if name == "smollm2":
    head = "| method | bits | group | size (MB) | Hamlet ppl | quantize time (s) |\n|---|---|---|---|---|---|"
    body = [f"| {r['method']} | {r['bits']} | {r.get('group_size') or '-'} | {r['size_mb']:.1f} | {r['ppl']:.2f} | "
            f"{r['seconds']:.1f} |" for r in rows]
  else:
    head = ("| method | bits | group | size (MB) | mean cos | min cos | top-1 NN | quantize time (s) |\n"
            "|---|---|---|---|---|---|---|---|")
    body = [f"| {r['method']} | {r['bits']} | {r.get('group_size') or '-'} | {r['size_mb']:.1f} | "
            f"{r['mean_cos']:.4f} | {r['min_cos']:.4f} | {r['top1_agree']:.3f} | {r['seconds']:.1f} |" for r in rows]
  return "\n".join([head] + body)


def _plot(name: str, rows, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  key = "ppl" if name == "smollm2" else "mean_cos"
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    ax.scatter(r["size_mb"], r[key])
    ax.annotate(f"{r['method']} w{r['bits']}", (r["size_mb"], r[key]), fontsize=7, xytext=(3, 3),
                textcoords="offset points")
  ax.set_xlabel("model size (MB)")
  ax.set_ylabel("Hamlet perplexity (lower is better)" if key == "ppl" else "mean cosine to fp32 (higher is better)")
  if key == "ppl":
    ax.set_yscale("log")
  ax.set_title(f"jquant on {name}: quality vs size")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
