"""Deviceless ahead-of-time compile of every kernel config to a CUDA binary (no GPU needed).

    python -m pallas_kernels.aot_check [--gpu h100|a100] [--spill-is-error]

Needs the CUDA PJRT plugin in the environment (``pip install "jax-cuda13-plugin[with-cuda]==<jax version>"
jax-cuda13-pjrt==<jax version>``), which the project's test venv does not carry, and runs with
``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``. Unlike lowering (Pallas -> Triton IR, checked by the tests), this runs
Triton's own compiler down to PTX/cubin, so it catches what only shows up there: unsupported conversions on an
architecture, shared-memory overflow, and (with ``--spill-is-error``) register spilling. Prints one OK/FAIL line
per (kernel, config, shape) and exits non-zero if any unexpected failure occurred. Expected refusals
(``supports()`` raising NotImplementedError) are reported as SKIP.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

_DEVICE_INFO = {
    # (device kind, compute capability major, minor, SMs, smem per SM, smem per block opt-in, HBM bytes/s)
    "h100": ("NVIDIA H100 80GB HBM3", 9, 0, 132, 233472, 232448, 3352320000000),
    "a100": ("NVIDIA A100-SXM4-80GB", 8, 0, 108, 167936, 166912, 2039000000000),
}


def _target_config(gpu: str) -> str:
  kind, major, minor, sms, smem_sm, smem_block, bw = _DEVICE_INFO[gpu]
  return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_sm}
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bw}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.7
  device_memory_size: 84929347584
  shared_memory_per_block_optin: {smem_block}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{kind}"
"""


def _cases():
  """(name, fn, arg specs as (shape, dtype) or None) for every default and autotune config."""
  import jax.numpy as jnp  # noqa: PLC0415

  from pallas_kernels import fp8_matmul as f8  # noqa: PLC0415
  from pallas_kernels import int4_matmul as i4  # noqa: PLC0415
  from pallas_kernels import int8_matmul as i8  # noqa: PLC0415

  bf16, f16, f32, i32 = jnp.bfloat16, jnp.float16, jnp.float32, jnp.int32
  for m, n, k, g, z, gi in ((1, 4096, 4096, 128, False, False), (16, 4096, 4096, 128, True, False),
                            (1, 4096, 4096, 32, True, True), (48, 1000, 2048, 64, False, False),
                            (1024, 4096, 4096, 128, True, False)):
    for dt in (bf16, f16):
      cfg = i4.default_config(m, n, k, group_size=g, has_g_idx=gi)
      yield (f"int4 default m={m} n={n} k={k} g={g} zeros={z} g_idx={gi} {jnp.dtype(dt).name} {cfg}",
             functools.partial(i4.int4_matmul, group_size=g),
             [((m, k), dt), ((n, k // 2), jnp.uint8), ((k // g, n), f32), ((k // g, n), jnp.int8) if z else None,
              ((k,), i32) if gi else None])
  for cfg in i4.autotune_configs():
    yield (f"int4 autotune {cfg}", functools.partial(i4.int4_matmul, group_size=128, config=cfg),
           [((256, 4096), bf16), ((2048, 2048), jnp.uint8), ((32, 2048), f32), None, None])
  for m in (1, 16, 48, 1024):
    yield (f"int8 default m={m}", i8.int8_matmul, [((m, 4096), jnp.int8), ((4096, 4096), jnp.int8), ((m, 1), f32),
                                                  ((1, 4096), f32)])
    for dt in (bf16, f32):
      yield (f"int8 dynamic m={m} {jnp.dtype(dt).name}", i8.int8_matmul_dynamic,
             [((m, 4096), dt), ((4096, 4096), jnp.int8), ((1, 4096), f32)])
    for dt in (jnp.float8_e4m3fn, jnp.float8_e5m2):
      yield (f"fp8 default m={m} {jnp.dtype(dt).name}", f8.fp8_matmul,
             [((m, 4096), dt), ((4096, 4096), dt), ((m, 1), f32), ((1, 4096), f32)])
  for cfg in i8.autotune_configs():
    yield (f"int8 autotune {cfg}", functools.partial(i8.int8_matmul, config=cfg),
           [((256, 4096), jnp.int8), ((4096, 4096), jnp.int8), ((256, 1), f32), ((1, 4096), f32)])
    for dt in (jnp.float8_e4m3fn, jnp.float8_e5m2):
      yield (f"fp8 autotune {cfg} {jnp.dtype(dt).name}", functools.partial(f8.fp8_matmul, config=cfg),
             [((256, 4096), dt), ((4096, 4096), dt), ((1, 1), f32), ((1, 1), f32)])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--gpu", choices=sorted(_DEVICE_INFO), default="h100")
  ap.add_argument("--spill-is-error", action="store_true", help="fail configs whose PTX spills registers")
  args = ap.parse_args(argv)
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  if args.spill_is_error:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_gpu_fail_ptx_compilation_on_register_spilling=true").strip()
  import jax  # noqa: PLC0415
  from jax.experimental import topologies  # noqa: PLC0415

  try:
    topo = topologies.get_topology_desc(platform="cuda", target_config=_target_config(args.gpu), topology="1x1x1")
  except Exception as e:  # noqa: BLE001 - report any plugin problem in one line.
    print(f"cannot create a deviceless CUDA topology ({type(e).__name__}: {e}); install the CUDA PJRT plugin "
          "matching your jax version (see this module's docstring).")
    return 2
  mesh = topologies.make_mesh(topo, (1,), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = jax.sharding.AbstractMesh(
      (1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,),
      abstract_device=jax.sharding.AbstractDevice(device_kind=_DEVICE_INFO[args.gpu][0],
                                                  num_cores=_DEVICE_INFO[args.gpu][3], platform="gpu"))
  failures = 0
  for name, fn, specs in _cases():
    sds = [None if s is None else jax.ShapeDtypeStruct(s[0], s[1], sharding=sharding) for s in specs]
    t0 = time.perf_counter()
    try:
      with jax.sharding.use_abstract_mesh(abstract):
        lowered = jax.jit(fn).trace(*sds).lower()
      lowered.compile()
      print(f"OK   {name} ({time.perf_counter() - t0:.1f}s)", flush=True)
    except NotImplementedError as e:
      print(f"SKIP {name}: {e}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every compile failure and carry on.
      failures += 1
      print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}", flush=True)
  print(f"{failures} unexpected failure(s) on {args.gpu}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
