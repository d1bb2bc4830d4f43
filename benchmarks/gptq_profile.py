"""Where `gptq_solve` spends its time at K = N (default 4096): the whole solve beside its parts, in one process.

    python benchmarks/gptq_profile.py [--k 4096]

Rows (steady state, best of 2, wall and process CPU seconds; on a shared machine compare CPU seconds and ratios):
the yardstick (one f32 K^3 XLA matmul), the full solve (w4 g128 symmetric, block 128), the solve at N = 64 (what does
not scale with N: the Cholesky, the per-feature loop overhead), `reverse_cholesky` alone, and the lazy-batch
trailing update alone (the same fori_loop of (128 x 128) @ (128 x N) matmuls), plus that update with 512-row
super-blocks (cross-super-block part only), the variant a two-level blocking would use.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jquant as jq  # noqa: E402
from jquant.solvers.hessian import reverse_cholesky  # noqa: E402

G = importlib.import_module("jquant.solvers.gptq")    # the module (jquant.solvers.gptq is also the function)


def _time(name: str, fn, reps: int = 2) -> None:
  jax.block_until_ready(fn())
  best = (float("inf"), float("inf"))
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
  print(f"| {name} | {best[0]:.3f} | {best[1]:.3f} |", flush=True)


def _trailing(k: int, rows: int):
  """The lazy-batch update of every block of `rows` features into all later rows (as gptq_solve's `trail`)."""
  nb = k // rows

  def run(vt, d):
    def block(b, r):
      i1 = b * rows

      def trail(j, r):
        c0 = j * rows
        vc = lax.dynamic_slice(vt, (c0, i1), (rows, rows))
        upd = jnp.matmul(vc, lax.dynamic_slice_in_dim(d, i1, rows, 0), precision=lax.Precision.HIGHEST)
        return lax.dynamic_update_slice_in_dim(r, lax.dynamic_slice_in_dim(r, c0, rows, 0) + upd, c0, 0)
      return lax.fori_loop(b + 1, nb, trail, r)
    return lax.fori_loop(0, nb, block, jnp.zeros_like(d))
  return jax.jit(run)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  ap.add_argument("--k", type=int, default=4096)
  k = ap.parse_args().k
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2 * k, k)).astype(np.float32)
  h = jnp.asarray(x.T @ x / (2 * k))
  w = jnp.asarray(rng.normal(size=(k, k)).astype(np.float32) / np.sqrt(k))
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=128), symmetric=True)
  print(f"K = N = {k}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
  print("| part | wall (s) | CPU (s) |\n|---|---|---|")
  mm = jax.jit(lambda a: a @ a)
  _time(f"yardstick: f32 {k}^3 matmul", lambda: mm(w))
  _time("gptq_solve", lambda: G.gptq_solve(w, h, jnp.float32(0.01), spec=spec)[0].qvalue)
  w64 = w[:, :64]
  _time("gptq_solve at N = 64", lambda: G.gptq_solve(w64, h, jnp.float32(0.01), spec=spec)[0].qvalue)
  chol = jax.jit(lambda a: reverse_cholesky(a, jnp.float32(0.01))[0])
  _time("reverse_cholesky (LAPACK potrf + damping retry)", lambda: chol(h))
  vt = jnp.tril(h)
  for rows in (128, 512):
    if k % rows == 0:
      fn = _trailing(k, rows)
      _time(f"trailing update alone, {rows}-row blocks", lambda fn=fn: fn(vt, w))
  print(f"load {os.getloadavg()}")


if __name__ == "__main__":
  main()
