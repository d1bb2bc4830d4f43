"""Benchmark the Pallas quantized-matmul kernels against XLA baselines; writes a markdown table.

    python benchmarks/kernels.py --out benchmarks/kernels_table.md [--autotune] [--iters 100]

On a GPU: for M in {1, 16, 128, 1024} and (K, N) in {(4096, 4096), (8192, 8192), (8192, 28672)}, each kernel
(W4A16 int4 g128, W8A8 int8, FP8 e4m3) is timed with its XLA baselines: (a) bf16 ``jnp.dot``, (b) naive
dequantize-then-dot in XLA, (c) XLA's native int8 / fp8 dot (8-bit kernels only). Columns: time, TFLOP/s, effective
GB/s (bytes the op must move: activations, weights, scales, output), % of the device's HBM bandwidth, and the
kernel's speedup over each baseline. Times are the mean over ``--iters`` back-to-back asynchronous calls after
warm-up (no L2 flush; dispatch overhead is included and matters for the smallest shapes).

Without a GPU it runs the XLA baselines at small sizes only and says that kernel numbers need a GPU.
Never collected by pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pallas_kernels import _common  # noqa: E402
from pallas_kernels.fp8_matmul import fp8_matmul  # noqa: E402
from pallas_kernels.int4_matmul import int4_matmul  # noqa: E402
from pallas_kernels.int8_matmul import int8_matmul  # noqa: E402

GPU_MS = (1, 16, 128, 1024)
GPU_KN = ((4096, 4096), (8192, 8192), (8192, 28672))
CPU_MS = (1, 16)
CPU_KN = ((512, 512), (1024, 1024))
GROUP = 128


@dataclasses.dataclass
class Row:
  kernel: str
  m: int
  k: int
  n: int
  bytes_moved: int
  t_kernel: float | None
  t_bf16: float
  t_dequant: float
  t_native: float | None


def bench(fn, *args, iters: int) -> float:
  """Mean seconds per call over ``iters`` back-to-back async calls (after compile + warm-up)."""
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  out = None
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def _dot(a, b, pref):
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=pref)


def make_weights(kind: str, k: int, n: int, rng: np.random.Generator) -> dict:
  """Weights for one kernel and its XLA baselines (on device), built once per (K, N)."""
  out = dict(w_bf16=jnp.asarray(rng.standard_normal((k, n), np.float32) * 0.02, jnp.bfloat16))
  if kind == "int4":
    q = rng.integers(-8, 8, (n, k), dtype=np.int8)
    packed = ((q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)).astype(np.uint8)
    out.update(w_packed=jnp.asarray(packed), q_kn=jnp.asarray(q.T, jnp.int4),
               scales=jnp.asarray(rng.uniform(0.01, 0.02, (k // GROUP, n)), jnp.float32))
  else:
    dt = jnp.int8 if kind == "int8" else jnp.float8_e4m3fn
    wq = rng.integers(-127, 128, (n, k), dtype=np.int8) if kind == "int8" else rng.standard_normal((n, k), np.float32)
    out.update(wq=jnp.asarray(wq, dt), wq_kn=jnp.asarray(wq.T, dt),
               ws=jnp.asarray(rng.uniform(0.01, 0.02, (1, n)), jnp.float32))
  return out


def make_acts(kind: str, m: int, k: int, rng: np.random.Generator) -> dict:
  out = dict(x=jnp.asarray(rng.standard_normal((m, k), np.float32), jnp.bfloat16))
  if kind != "int4":
    dt = jnp.int8 if kind == "int8" else jnp.float8_e4m3fn
    xq = rng.integers(-127, 128, (m, k), dtype=np.int8) if kind == "int8" else rng.standard_normal((m, k), np.float32)
    out.update(xq=jnp.asarray(xq, dt), xs=jnp.asarray(rng.uniform(0.01, 0.02, (m, 1)), jnp.float32))
  return out


def xla_fns(kind: str):
  """(bf16 dot, naive dequant-then-dot, native 8-bit dot or None) as jitted XLA functions."""
  bf16 = jax.jit(lambda p: jnp.dot(p["x"], p["w_bf16"]))
  if kind == "int4":
    def deq(p):
      q = p["q_kn"].astype(jnp.bfloat16)
      k, n = q.shape
      w = (q.reshape(k // GROUP, GROUP, n) * p["scales"].astype(jnp.bfloat16)[:, None, :]).reshape(k, n)
      return _dot(p["x"], w, jnp.float32).astype(jnp.bfloat16)
    return bf16, jax.jit(deq), None

  def deq8(p):
    w = (p["wq_kn"].astype(jnp.float32) * p["ws"]).astype(jnp.bfloat16)
    return _dot(p["x"], w, jnp.float32).astype(jnp.bfloat16)

  pref = jnp.int32 if kind == "int8" else jnp.float32
  native = jax.jit(lambda p: (_dot(p["xq"], p["wq_kn"], pref).astype(jnp.float32) * p["xs"] * p["ws"]
                              ).astype(jnp.bfloat16))
  return bf16, jax.jit(deq8), native


def kernel_fn(kind: str, autotune: bool):
  if kind == "int4":
    return lambda p: int4_matmul(p["x"], p["w_packed"], p["scales"], group_size=GROUP, autotune=autotune)
  fn = int8_matmul if kind == "int8" else fp8_matmul
  return lambda p: fn(p["xq"], p["wq"], p["xs"], p["ws"], autotune=autotune)


def bytes_moved(kind: str, m: int, k: int, n: int) -> int:
  out = m * n * 2
  if kind == "int4":
    return m * k * 2 + n * k // 2 + (k // GROUP) * n * 4 + out
  return m * k + n * k + m * 4 + n * 4 + out


def run(ms, kns, *, with_kernels: bool, iters: int, autotune: bool) -> list[Row]:
  rng = np.random.default_rng(0)
  rows = []
  for kind in ("int4", "int8", "fp8"):
    bf16, deq, native = xla_fns(kind)
    kfn = jax.jit(kernel_fn(kind, autotune))
    for k, n in kns:
      weights = make_weights(kind, k, n, rng)
      for m in ms:
        p = {**weights, **make_acts(kind, m, k, rng)}
        if with_kernels and autotune:
          jax.block_until_ready(kernel_fn(kind, True)(p))  # eager call tunes; the jitted kfn reuses the winner
        t_kernel = bench(kfn, p, iters=iters) if with_kernels else None
        rows.append(Row(kind, m, k, n, bytes_moved(kind, m, k, n), t_kernel, bench(bf16, p, iters=iters),
                        bench(deq, p, iters=iters), None if native is None else bench(native, p, iters=iters)))
        print(format_row(rows[-1], None), flush=True)
        del p
      del weights
  return rows


HEADER = ("| kernel | M | K | N | time (us) | TFLOP/s | GB/s | % HBM | bf16 dot (us) | x vs bf16 | "
          "dequant+dot (us) | x vs dequant | int8/fp8 dot (us) | x vs native |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: Row, hbm: float | None) -> str:
  def us(t):
    return "-" if t is None else f"{t * 1e6:.1f}"

  def ratio(base):
    return "-" if r.t_kernel is None or base is None else f"{base / r.t_kernel:.2f}"

  flops = 2 * r.m * r.k * r.n
  tk = r.t_kernel
  tflops = "-" if tk is None else f"{flops / tk / 1e12:.1f}"
  gbs = "-" if tk is None else f"{r.bytes_moved / tk / 1e9:.0f}"
  pct = "-" if tk is None or hbm is None else f"{100 * r.bytes_moved / tk / hbm:.0f}%"
  return (f"| {r.kernel} | {r.m} | {r.k} | {r.n} | {us(tk)} | {tflops} | {gbs} | {pct} | {us(r.t_bf16)} | "
          f"{ratio(r.t_bf16)} | {us(r.t_dequant)} | {ratio(r.t_dequant)} | {us(r.t_native)} | {ratio(r.t_native)} |")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", type=pathlib.Path, default=None, help="write the markdown table here")
  ap.add_argument("--iters", type=int, default=100)
  ap.add_argument("--autotune", action="store_true", help="autotune kernel configs per shape (GPU only; slow)")
  args = ap.parse_args(argv)
  on_gpu = _common.on_gpu()
  kind = _common.device_kind()
  hbm = _common.hbm_bandwidth(kind) if on_gpu else None
  if on_gpu:
    rows = run(GPU_MS, GPU_KN, with_kernels=True, iters=args.iters, autotune=args.autotune)
    note = f"Device: {kind} (HBM peak {hbm / 1e12:.2f} TB/s)." if hbm else f"Device: {kind} (HBM peak unknown)."
  else:
    print("No GPU: running the XLA baselines at small sizes only; kernel numbers need a GPU.", flush=True)
    rows = run(CPU_MS, CPU_KN, with_kernels=False, iters=min(args.iters, 10), autotune=False)
    note = (f"Device: {kind} (no GPU). Only XLA baselines at small sizes were timed; "
            "Pallas kernel numbers need a GPU.")
  table = "\n".join([note, "", HEADER] + [format_row(r, hbm) for r in rows])
  print(table)
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
