"""AutoRound on the first blocks of SmolLM2: seconds per block and the block-output loss it reaches vs rounding to
nearest, for a few (steps, batch_rows) settings; the full model's time is 30 x the per-block time.

    .venv/bin/python benchmarks/autoround_blocks.py [--blocks 2] [--bits 4] [--settings 200:4,50:1]

Calibration as the demo (16 windows x 512 tokens from the other plays, batches of 4); groups of 64. Settings are
``steps:batch_rows`` (batch_rows sequences of 512 tokens per sign-SGD step; 4 = the whole batch). The first block
of each setting includes the compile; later blocks reuse the program.
"""

import argparse
import dataclasses
import os
import sys
import time

from jquant import ptq
from jquant.cli import common


def _row(*cols):
  print("| " + " | ".join(str(c) for c in cols) + " |", flush=True)


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--blocks", type=int, default=2)
  ap.add_argument("--bits", type=int, default=4)
  ap.add_argument("--settings", default="200:4,50:1")
  args = ap.parse_args()
  kind = common.model_kind("smollm2")
  model, params = common.load_model(kind.name)
  cfg = dataclasses.replace(model.config, num_layers=args.blocks)
  small = type(model)(cfg, tokenizer=model.tokenizer)
  sparams = {k: v for k, v in params.items() if not k.startswith("layers_") or int(k.split("_")[1]) < args.blocks}
  batches = kind.calibration_batches(small, num=16)
  print(f"load average {os.getloadavg()[0]:.1f}; SmolLM2 first {args.blocks} blocks, w{args.bits} g64", flush=True)
  _row("steps", "batch rows", "block", "seconds (incl. compile in block 0)", "loss RTN", "loss learned", "ratio")
  for setting in args.settings.split(","):
    steps, rows = (int(v) for v in setting.split(":"))
    method = ptq.AutoRound(common.weight_spec(args.bits, 64), steps=steps, batch_rows=rows)
    t0 = time.perf_counter()
    _, report = ptq.quantize_model(small, sparams, batches, method, progress=False)
    total = time.perf_counter() - t0
    seen = {}
    for e in report.layers:      # each linear of a block records the block's time / its linear count
      sec, _, _ = seen.get(e.path.split("/")[0], (0.0, 0, 0))
      seen[e.path.split("/")[0]] = (sec + e.seconds, e.extra["block_loss_rtn"], e.extra["block_loss"])
    for blk, (sec, l0, l1) in seen.items():
      _row(steps, rows, blk, f"{sec:.1f}", f"{l0:.4g}", f"{l1:.4g}", f"{l1 / l0:.3f}")
    print(f"total {total:.1f} s for {args.blocks} blocks (load {os.getloadavg()[0]:.1f})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
