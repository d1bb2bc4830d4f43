"""Time of the demo's PTQ stages (``quantize_model`` on SmolLM2) in this checkout vs a baseline git ref, side by side.

Each run is a fresh subprocess (first call included: trace + compile + run); runs alternate baseline / current so
that machine load hits both alike, and the process CPU time is printed beside the wall time (on a shared machine
it moves less with the load). The baseline is ``git archive``d into a temporary folder and imported from there.
Besides the times, the script checks that both produce the same quantized model: it prints the largest relative
difference of the per-layer solver losses (the output SQNR where a method has no loss) and how many QArray codes
differ.

    python benchmarks/ptq_stage.py                       # GPTQ act-order MSE w4 g64 + AWQ w4, 8 layers, 8 windows
    python benchmarks/ptq_stage.py --baseline HEAD~1 --layers 30 --calib 16 --rounds 1   # the demo's sizes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"gptq": ("gptq", 4, 64, True, "mse"), "awq": ("awq", 4, 64, False, "minmax"),
           "smoothquant": ("smoothquant", 8, None, False, "minmax")}


def child(args) -> None:
  sys.path.insert(0, args.src)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import jquant as jq  # pylint: disable=import-outside-toplevel
  from jquant.cli import common  # pylint: disable=import-outside-toplevel
  from jquant.models import SmolLM2, load_smollm2  # pylint: disable=import-outside-toplevel
  assert os.path.dirname(os.path.abspath(jq.__file__)) == os.path.join(os.path.abspath(args.src), "jquant"), \
      jq.__file__
  model, params = load_smollm2()
  n = args.layers
  model = SmolLM2(dataclasses.replace(model.config, num_layers=n), tokenizer=model.tokenizer)
  params = {k: v for k, v in params.items() if not k.startswith("layers_") or int(k.split("_")[1]) < n}
  batches = [jnp.asarray(b) for b in common.calibration_batches("smollm2", model, num=args.calib)]
  method = common.build_method(*METHODS[args.method])
  t0, c0 = time.perf_counter(), time.process_time()
  qparams, report = jq.ptq.quantize_model(model, params, batches, method, progress=False)
  jax.block_until_ready(qparams)
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  codes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(qparams, is_leaf=lambda x: isinstance(x, jq.QArray))[0]:
    if isinstance(leaf, jq.QArray):
      codes[jax.tree_util.keystr(path)] = np.asarray(leaf.qvalue).astype(np.int32)
  np.savez(args.codes, **codes)
  print(json.dumps({"seconds": seconds, "cpu": cpu, "loss": {e.path: float(e.loss if e.loss is not None else e.sqnr_db)
                                                 for e in report.layers}}))


def _run(src: str, method: str, args, codes: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--src", src, "--method", method,
         "--layers", str(args.layers), "--calib", str(args.calib), "--codes", codes]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=src, check=False)
  if r.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  ap.add_argument("--baseline", default="main", help="git ref of the baseline (default main)")
  ap.add_argument("--methods", default="gptq,awq", help=f"comma-separated, of {sorted(METHODS)}")
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--calib", type=int, default=8, help="512-token calibration windows (batches of 4)")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--src", default=ROOT, help=argparse.SUPPRESS)
  ap.add_argument("--method", default="gptq", help=argparse.SUPPRESS)
  ap.add_argument("--codes", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    child(args)
    return
  methods = args.methods.split(",")
  bad = [m for m in methods if m not in METHODS]
  if bad:
    raise SystemExit(f"--methods: unknown {bad}; use some of {sorted(METHODS)}")
  with tempfile.TemporaryDirectory() as tmp:
    base_src = os.path.join(tmp, "baseline")
    os.makedirs(base_src)
    sha = subprocess.check_output(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, text=True).strip()
    arch = subprocess.run(["git", "archive", args.baseline, "jquant"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", base_src], input=arch.stdout, check=True)
    print(f"baseline {args.baseline} ({sha}) vs this checkout; {args.layers} layers, {args.calib} windows; "
          f"load {os.getloadavg()}", flush=True)
    rows = []
    for m in methods:
      times: dict[str, list[float]] = {"baseline": [], "current": []}
      cpus: dict[str, list[float]] = {"baseline": [], "current": []}
      res = {}
      for r in range(args.rounds):
        for which, src in (("baseline", base_src), ("current", ROOT)):
          codes = os.path.join(tmp, f"{which}_{m}.npz")
          res[which] = _run(src, m, args, codes)
          times[which].append(res[which]["seconds"])
          cpus[which].append(res[which]["cpu"])
          print(f"round {r} {m} {which}: {times[which][-1]:.1f} s wall, {cpus[which][-1]:.1f} s CPU "
                f"(load {os.getloadavg()[0]:.1f})", flush=True)
      lb, lc = res["baseline"]["loss"], res["current"]["loss"]
      rel = max(abs(lb[k] - lc[k]) / max(abs(lb[k]), 1e-30) for k in lb)
      cb, cc = np.load(os.path.join(tmp, f"baseline_{m}.npz")), np.load(os.path.join(tmp, f"current_{m}.npz"))
      diff = sum(int(np.sum(cb[k] != cc[k])) for k in cb.files)
      total = sum(cb[k].size for k in cb.files)
      med = lambda d: (statistics.median(d["baseline"]), statistics.median(d["current"]))
      rows.append((m, *med(times), *med(cpus), rel, diff, total))
  print(f"\n{args.layers} layers, {args.calib} windows, median of {args.rounds}, load {os.getloadavg()}")
  print("| method | wall baseline / current (s) | ratio | CPU baseline / current (s) | ratio | max rel loss diff | "
        "codes differing |")
  print("|---|---|---|---|---|---|---|")
  for m, tb, tc, cb, cc, rel, diff, total in rows:
    print(f"| {m} | {tb:.1f} / {tc:.1f} | {tc / tb:.2f}x | {cb:.1f} / {cc:.1f} | {cc / cb:.2f}x | {rel:.1e} | "
          f"{diff} / {total} |")


if __name__ == "__main__":
  main()
