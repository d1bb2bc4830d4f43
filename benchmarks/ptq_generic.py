"""Time of the generic PTQ path (your own Flax model, found by interception) vs jquant's BlockwiseModel path.

Both quantize the same SmolLM2 weights with the same method and calibration batches: jquant's `SmolLM2`
(BlockwiseModel) and `examples/ptq_your_model.py`'s `MyLlama` (DenseGeneral heads), unrolled and `nn.scan`-ned.
Runs alternate (ABC ABC ...) so that machine load hits all alike; the ratio of medians is printed.

    python benchmarks/ptq_generic.py                   # 8 layers, GPTQ act-order w4 g64, 8 windows, 2 rounds
    python benchmarks/ptq_generic.py --layers 30 --rounds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import jquant as jq  # noqa: E402
from ptq_your_model import smollm2_as_my_llama  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--calib", type=int, default=8, help="512-token calibration windows")
  ap.add_argument("--rounds", type=int, default=2)
  args = ap.parse_args()

  from jquant.eval import lm_calibration_windows  # pylint: disable=import-outside-toplevel
  from jquant.models import SmolLM2  # pylint: disable=import-outside-toplevel
  mine, p_mine, ref, p_ref = smollm2_as_my_llama(args.layers, scan=False)
  mine_s, p_mine_s, _, _ = smollm2_as_my_llama(args.layers, scan=True)
  ref_n = SmolLM2(dataclasses.replace(ref.config, num_layers=args.layers), tokenizer=ref.tokenizer)
  p_ref_n = {k: v for k, v in p_ref.items() if not k.startswith("layers_") or int(k.split("_")[1]) < args.layers}
  windows = lm_calibration_windows(ref, num_windows=args.calib)
  batches = [jnp.asarray(windows[i:i + 4]) for i in range(0, len(windows), 4)]
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=64), symmetric=False)
  method = jq.ptq.GPTQ(spec, act_order=True)
  runs = {"BlockwiseModel (SmolLM2)": (ref_n, p_ref_n), "your model, unrolled": (mine, p_mine),
          "your model, nn.scan": (mine_s, p_mine_s)}
  times: dict[str, list[float]] = {k: [] for k in runs}
  for r in range(args.rounds):
    for name, (model, params) in runs.items():
      t0 = time.perf_counter()
      jq.ptq.quantize_model(model, params, batches, method, progress=False)
      times[name].append(time.perf_counter() - t0)
      print(f"round {r}: {name}: {times[name][-1]:.1f} s", flush=True)
  base = statistics.median(times["BlockwiseModel (SmolLM2)"])
  print(f"\nGPTQ act-order w4 g64, {args.layers} layers, {args.calib} windows, {os.cpu_count()} CPUs "
        f"(median of {args.rounds}, load {os.getloadavg()[0]:.1f})")
  print("| path | seconds | ratio |\n|---|---|---|")
  for name, ts in times.items():
    print(f"| {name} | {statistics.median(ts):.1f} | {statistics.median(ts) / base:.2f}x |")


if __name__ == "__main__":
  main()
