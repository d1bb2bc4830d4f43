"""GPTQ benchmark: first call (trace + compile + run) and steady state, jquant vs Qwix's gptq_core.

Usage (Qwix is not in the project venv; use a separate one):
  python -m venv /work/bench-venv && /work/bench-venv/bin/pip install jax==0.11.2 jaxlib==0.11.2 qwix
  PYTHONPATH=/work/main /work/bench-venv/bin/python benchmarks/solvers.py --sizes 1024 4096 --qwix-sizes 1024

Both solve the same layer: w (K, N) = (K, K), H = 2/T X^T X from T = 2K correlated random tokens, 4-bit symmetric
groups of 128 (Qwix's asymmetric GPTQ mode crashes in 0.1.8, so symmetric is the common ground); block 128,
damping 0.01. jquant is also timed with the reference's default asymmetric UINT4 grid. "rel err" is
||X (W - Wq)|| / ||X W|| on the calibration tokens, with RTN as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

import jquant as jq  # noqa: E402
from jquant import solvers  # noqa: E402


def _layer(k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  t = 2 * k
  mix = rng.normal(size=(k, k)).astype(np.float32) / np.sqrt(k)
  x = rng.normal(size=(t, k)).astype(np.float32) @ (np.eye(k, dtype=np.float32) + 0.9 * mix)
  x *= np.exp(rng.normal(scale=0.5, size=k)).astype(np.float32)
  w = (rng.normal(size=(k, k)) / np.sqrt(k)).astype(np.float32)
  h = (2.0 / t) * (x.T @ x)
  return jnp.asarray(x), jnp.asarray(w), jnp.asarray(h)


def _rel_err(x, w, wq) -> float:
  ref = x @ w
  return float(jnp.linalg.norm(x @ wq - ref) / jnp.linalg.norm(ref))


def _time(fn, reps: int):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  steady = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    steady.append(time.perf_counter() - t0)
  return out, first, min(steady) if steady else float("nan")


def bench_jquant(k: int, reps: int, symmetric: bool):
  x, w, h = _layer(k)
  qt = jq.INT4 if symmetric else jq.UINT4
  spec = jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=128), symmetric=symmetric)
  (qa, _), first, steady = _time(lambda: solvers.gptq(w, h, spec, block_size=128, damp=0.01), reps)
  err = _rel_err(x, w, jq.dequantize(qa))
  rtn = _rel_err(x, w, jq.dequantize(solvers.rtn(w, spec)))
  return first, steady, err, rtn


def bench_qwix(k: int, reps: int):
  from qwix._src.core import qarray as qwix_qarray   # noqa: PLC0415 (optional dependency)
  from qwix.contrib import gptq_core                  # noqa: PLC0415

  x, w, h = _layer(k)
  how = qwix_qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=(0,), tiled_axes={1: 128})
  fn = jax.jit(lambda wt, hh: gptq_core.quantize_weight(wt, hh, how, blocksize=128, percdamp=0.01))
  wt = w.T                                             # Qwix: W (out, in)
  (qa, _), first, steady = _time(lambda: fn(wt, h), reps)
  wq = qwix_qarray.dequantize(qa).T
  return first, steady, _rel_err(x, w, wq)


def bench_torch_ref(k: int, reps: int):
  """The PyTorch-CPU reference-style GPTQ (benchmarks/gptq_torch_ref.py) in the interop venv, as a subprocess."""
  root = Path(__file__).resolve().parents[1]
  py = root / ".venv-interop" / "bin" / "python"
  if not py.exists():
    print(f"no {py}: the PyTorch reference row is skipped")
    return None
  r = subprocess.run([str(py), str(root / "benchmarks" / "gptq_torch_ref.py"), str(k), "--reps", str(reps)],
                     capture_output=True, text=True)
  if r.returncode:
    print(f"torch reference failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return None
  return json.loads(r.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
  p.add_argument("--qwix-sizes", type=int, nargs="*", default=[1024], help="Qwix compiles slowly; 4096 is optional")
  p.add_argument("--torch-sizes", type=int, nargs="*", default=[4096],
                 help="sizes at which the PyTorch-CPU reference-style GPTQ (int4 sym g128) runs as the baseline")
  p.add_argument("--reps", type=int, default=2)
  args = p.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"load avg {os.getloadavg()[0]:.1f}")
  rows = []
  x = jnp.ones((4096, 4096), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(x))
  t = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(x))
    t.append(time.perf_counter() - t0)
  print(f"yardstick: one f32 4096^3 XLA matmul takes {min(t):.3f} s on this machine right now")
  for k in args.sizes:
    for sym in (True, False):
      first, steady, err, rtn = bench_jquant(k, args.reps, sym)
      rows.append(("jquant", "int4 sym" if sym else "uint4 asym", k, first, steady, err, rtn))
      print(rows[-1], flush=True)
  try:
    import qwix  # noqa: F401, PLC0415
    have_qwix = True
  except ImportError:
    have_qwix = False
    print("qwix not importable: Qwix rows skipped")
  if have_qwix:
    for k in args.qwix_sizes:
      first, steady, err = bench_qwix(k, args.reps)
      rows.append(("qwix", "int4 sym", k, first, steady, err, float("nan")))
      print(rows[-1], flush=True)
  for k in args.torch_sizes:
    ref = bench_torch_ref(k, args.reps)
    if ref is None:
      continue
    rows.append(("torch", "int4 sym", k, ref["first_s"], ref["steady_s"], float("nan"), float("nan")))
    mine = [r for r in rows if r[0] == "jquant" and r[1] == "int4 sym" and r[2] == k]
    if mine:
      print(f"K=N={k}: jquant steady / PyTorch-CPU reference steady = {mine[0][4] / ref['steady_s']:.2f}x "
            f"(target <= 0.25x); first call {mine[0][3]:.2f} s (target <= 2 s)", flush=True)
  print()
  print(f"| {'impl':6} | {'grid':10} | {'K=N':>5} | {'first call s':>12} | {'steady s':>8} | {'rel err':>8} | "
        f"{'RTN err':>8} |")
  print("|" + "|".join("-" * (n + 2) for n in (6, 10, 5, 12, 8, 8, 8)) + "|")
  for impl, grid, k, first, steady, err, rtn in sorted(rows, key=lambda r: (r[2], r[0], r[1])):
    print(f"| {impl:6} | {grid:10} | {k:5} | {first:12.2f} | {steady:8.3f} | {err:8.4f} | {rtn:8.4f} |")


if __name__ == "__main__":
  main()
