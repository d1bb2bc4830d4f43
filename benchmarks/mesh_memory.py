"""Calibration memory per device vs device count on a CPU mesh (virtual devices, one subprocess per mesh).

For one block of the tiny model of tests/ptq/mesh_worker.py (d 32, FFN 64, 2 batches of 4 x 16 tokens): the bytes
each device holds of the block's kernels, its input activations and the reduced Gram matrices during the capture,
against the same arrays on one device. Usage: ``python -m benchmarks.mesh_memory``.
"""

import json
import os
import subprocess
import sys

SHAPES = [(1, 1), (2, 1), (1, 2), (2, 2), (2, 4), (1, 8)]

CODE = ("import json, sys; from tests.ptq.mesh_worker import capture_memory; "
        "print('RESULT ' + json.dumps(capture_memory(0, tuple(json.loads(sys.argv[1])))))")


def main():
  print("| mesh (data x model) | devices | max bytes / device | all arrays, bytes | ratio |")
  print("|---|---|---|---|---|")
  for shape in SHAPES:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={shape[0] * shape[1]}")
    out = subprocess.run([sys.executable, "-c", CODE, json.dumps(shape)], env=env, capture_output=True, text=True,
                         check=True).stdout
    r = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:])
    print(f"| {shape[0]} x {shape[1]} | {shape[0] * shape[1]} | {r['max_device_bytes']} | {r['total_bytes']} | "
          f"{r['max_device_bytes'] / r['total_bytes']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
