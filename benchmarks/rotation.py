"""SmolLM2 Hamlet perplexity with and without Hadamard rotations (R1, R2, online R4): W4A16, W4A8, W4A4.

    .venv/bin/python benchmarks/rotation.py [--only rtn|gptq]

Calibration as the demo (16 windows x 512 tokens from the other plays, seed 0); Hamlet 8 x 512 windows. Prints one
row per (method, rotation, activation bits) as it goes, with quantize and eval seconds.
"""

import argparse
import sys
import time

from jquant import ptq
from jquant.cli import common
from jquant.models.rotation import rotate


def _row(*cols):
  print("| " + " | ".join(str(c) for c in cols) + " |", flush=True)


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="rtn4,gptq4,gptq3")
  ap.add_argument("--windows", type=int, default=8)
  ap.add_argument("--no-fp", action="store_true", help="skip the rotated float model's row")
  args = ap.parse_args()
  kind = common.model_kind("smollm2")
  model, params = common.load_model(kind.name)
  batches = kind.calibration_batches(model, num=16)
  t0 = time.perf_counter()
  rmodel, rparams = rotate(model, params, seed=0)
  t_rot = time.perf_counter() - t0
  _row("method", "bits", "rotated", "acts", "Hamlet ppl", "quantize s", "eval s")
  t0 = time.perf_counter()
  if not args.no_fp:
    _row("fp32 rotated", 32, "yes", "fp",
         f"{kind.evaluate(rmodel, rparams, windows=args.windows)['ppl']:.2f}", f"{t_rot:.1f}",
         f"{time.perf_counter() - t0:.1f}")
  for cfg in args.configs.split(","):
    name, bits = cfg[:-1], int(cfg[-1])
    for rot in (True, False):
      m, p = (rmodel, rparams) if rot else (model, params)
      method = common.build_method(name, bits, 64, name == "gptq", "mse" if name == "gptq" else "minmax")
      t0 = time.perf_counter()
      qparams, _ = ptq.quantize_model(m, p, batches, method, progress=False)
      tq = time.perf_counter() - t0
      for act in ((None, 8, 4) if bits == 4 else (None,)):
        run = ptq.runtime_model(m, ptq.ActQuant(method, act) if act else method)
        t0 = time.perf_counter()
        ppl = kind.evaluate(run, qparams, windows=args.windows)["ppl"]
        _row(method.name, bits, "yes" if rot else "no", f"int{act}" if act else "fp", f"{ppl:.2f}", f"{tq:.1f}",
             f"{time.perf_counter() - t0:.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
