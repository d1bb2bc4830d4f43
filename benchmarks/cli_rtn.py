"""`python -m jquant quantize --method rtn` without a calibration pass vs the calibrated pipeline it replaced.

    python benchmarks/cli_rtn.py [--models smollm2,minilm] [--baseline]

Per model: load once (not timed), then time `jquant.cli.quantize`'s data-free path (block linears + int8 embedding +
the weight-SQNR table, what the command does after loading) and, with ``--baseline``, `jq.ptq.quantize_model` with
RTN on the default calibration set (the old flow). Prints seconds and the ratio; run it on an idle machine and
record ``uptime`` beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jquant import ptq  # noqa: E402  pylint: disable=wrong-import-position
from jquant.cli import common, quantize  # noqa: E402  pylint: disable=wrong-import-position


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--models", default="smollm2,minilm")
  ap.add_argument("--baseline", action="store_true")
  args = ap.parse_args()
  print(f"load average {os.getloadavg()}")
  for name in args.models.split(","):
    kind = common.model_kind(name)
    model, params = common.load_model(name)
    method = common.build_method("rtn", 4, kind.default_group)
    for rep in range(2):           # the first run includes compiles; both are printed
      t0 = time.perf_counter()
      q = common.quantize_embedding(kind, common.quantize_data_free(model, params, method), params, "int8")
      text = quantize._report(kind, model, params, q, method)[0]   # pylint: disable=protected-access
      fast = time.perf_counter() - t0
      print(f"{name} rtn w4 data-free (run {rep + 1}): {fast:.1f} s; {text.splitlines()[0]}", flush=True)
    if args.baseline:
      t0 = time.perf_counter()
      ptq.quantize_model(model, params, kind.calibration_batches(model), method, progress=False)
      slow = time.perf_counter() - t0
      print(f"{name} rtn w4 calibrated pipeline (old flow): {slow:.1f} s; ratio {slow / fast:.1f}x", flush=True)
  print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
