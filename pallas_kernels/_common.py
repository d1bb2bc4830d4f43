"""Helpers shared by the Pallas GPU kernels: arithmetic, padding, device queries, autotuning.

Nothing here imports jquant; every function takes and returns plain arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

#: Peak HBM bandwidth (bytes/s) by device-kind substring, for roofline reporting.
HBM_BYTES_PER_S = {
    "H200": 4.8e12,
    "H100": 3.35e12,
    "A100": 2.0e12,
    "L40": 0.864e12,
    "A10": 0.6e12,
}


def cdiv(a: int, b: int) -> int:
  """Ceiling division of two positive ints."""
  return -(-a // b)


def round_up(a: int, b: int) -> int:
  """Smallest multiple of ``b`` that is >= ``a``."""
  return cdiv(a, b) * b


def pad_axis(x: jax.Array, axis: int, size: int, value: Any = 0) -> jax.Array:
  """Pads ``x`` with ``value`` at the end of ``axis`` up to ``size`` (no-op if already that size)."""
  extra = size - x.shape[axis]
  if extra < 0:
    raise ValueError(f"pad_axis: axis {axis} of shape {x.shape} is longer than the target {size}.")
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def largest_divisor(n: int, candidates: Sequence[int]) -> int | None:
  """First value of ``candidates`` (ordered by preference) that divides ``n``, or None."""
  for c in candidates:
    if n % c == 0:
      return c
  return None


def is_power_of_2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def on_gpu() -> bool:
  """True when JAX's default backend is an NVIDIA GPU."""
  try:
    return jax.default_backend() == "gpu"
  except RuntimeError:
    return False


def device_kind() -> str:
  """Device kind of the first default device, e.g. ``"NVIDIA H100 80GB HBM3"`` (``"cpu"`` on CPU)."""
  return jax.devices()[0].device_kind


def target_compute_capability() -> int | None:
  """Compute capability (e.g. 90, 80) of the GPU being compiled for, or None when unknown.

  Uses the same resolution as the Pallas Triton lowering (a real device, or the ``AbstractDevice`` of an abstract
  mesh when lowering for CUDA from a CPU host). Relies on a private JAX helper, so any failure means "unknown".
  """
  try:
    from jax._src.pallas.triton import gpu_info  # noqa: PLC0415

    return int(gpu_info.get_gpu_info().compute_capability) or None
  except Exception:  # noqa: BLE001 - no GPU, no abstract device, or the private API moved.
    return None


def hbm_bandwidth(kind: str) -> float | None:
  """Peak HBM bandwidth in bytes/s for a device kind, or None when unknown."""
  for key, bw in HBM_BYTES_PER_S.items():
    if key in kind:
      return bw
  return None


def time_fn(fn: Callable[..., Any], *args: Any, iters: int = 20, warmup: int = 3) -> float:
  """Median wall time in seconds of ``fn(*args)`` (compiled before timing)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[len(times) // 2]


_AUTOTUNE_CACHE: dict[Any, Any] = {}


def autotune(
    key: Any,
    make_fn: Callable[[Any], Callable[..., Any]],
    configs: Sequence[Any],
    args: Sequence[jax.Array],
    *,
    supports: Callable[[Any], str | None],
    default: Any,
) -> Any:
  """Picks the fastest config on the current GPU; returns ``default`` elsewhere.

  Only configs that ``supports`` accepts (returns None for) are timed; configs that fail to compile are skipped.
  The winner is cached per ``key`` (shapes, dtypes, options) for the life of the process. Timing needs concrete
  arrays: under ``jax.jit`` (traced ``args``) the cached winner is returned if this problem was tuned eagerly
  before, else ``default`` -- so tune once outside jit, then jit.

  Args:
    key: hashable description of the problem (shapes, dtypes, static options).
    make_fn: maps a config to a callable taking ``args``.
    configs: candidate configs.
    args: concrete input arrays.
    supports: maps a config to a reason string, or None when it can run this problem.
    default: the config returned without a GPU or when no candidate runs.
  """
  if not on_gpu():
    return default
  if key in _AUTOTUNE_CACHE:
    return _AUTOTUNE_CACHE[key]
  if any(isinstance(a, jax.core.Tracer) for a in args):
    return default
  best, best_t = default, float("inf")
  for cfg in configs:
    if supports(cfg) is not None:
      continue
    try:
      t = time_fn(jax.jit(make_fn(cfg)), *args, iters=10, warmup=2)
    except Exception:  # noqa: BLE001 - a config that fails to compile or run is simply not a candidate.
      continue
    if t < best_t:
      best, best_t = cfg, t
  _AUTOTUNE_CACHE[key] = best
  return best


def dispatch(
    name: str,
    run: Callable[..., jax.Array],
    args: Sequence[Any],
    *,
    n: int,
    out_dtype: Any,
    config: Any,
    default: Any,
    tune: bool,
    interpret: bool,
    candidates: Sequence[Any],
    key: Any,
    supports: Callable[[Any], str | None],
) -> jax.Array:
  """The ops-level path every kernel entry point shares, after its own input checks.

  Picks the config (``config``, else ``default``, or with ``tune`` on a GPU the fastest of ``candidates``), raises
  NotImplementedError carrying ``supports(config)``'s reason, returns an empty (0, n) ``out_dtype`` array for M = 0,
  and otherwise calls ``run(*args, config=config, interpret=interpret)`` (``args[0]`` is x, (M, K)).
  """
  if config is None:
    config = default
    if tune and not interpret:
      config = autotune(key, lambda c: functools.partial(run, config=c, interpret=False), candidates, args,
                        supports=supports, default=default)
  if reason := supports(config):
    raise NotImplementedError(f"{name}: {reason}")
  if args[0].shape[0] == 0:
    return jnp.zeros((0, n), out_dtype)
  return run(*args, config=config, interpret=interpret)


@functools.cache
def triton_compiler_params(num_warps: int, num_stages: int):
  """``pltriton.CompilerParams`` for the Triton lowering (imported lazily: the module warns on import)."""
  from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415

  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TileConfig:
  """Tiling and launch parameters of a plain (no split-K) Triton matmul kernel (int8 and fp8 kernels).

  Attributes:
    block_m: rows of x per program (power of 2, >= 16).
    block_n: output columns per program (power of 2, >= 16).
    block_k: K step of the inner loop (power of 2, >= 32: the 8-bit MMA K).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth.
  """

  block_m: int
  block_n: int
  block_k: int
  num_warps: int = 4
  num_stages: int = 3

  def __post_init__(self):
    for name, low in (("block_m", 16), ("block_n", 16), ("block_k", 32)):
      v = getattr(self, name)
      if not (isinstance(v, int) and is_power_of_2(v) and v >= low):
        raise ValueError(f"Config.{name}={v!r}; expected a power of 2 >= {low}.")
    if self.num_warps not in (1, 2, 4, 8, 16):
      raise ValueError(f"Config.num_warps={self.num_warps!r}; expected one of 1, 2, 4, 8, 16.")
    if not (isinstance(self.num_stages, int) and self.num_stages >= 1):
      raise ValueError(f"Config.num_stages={self.num_stages!r}; expected an int >= 1.")


def default_tile_config(m: int, n: int, *, x_itemsize: int = 1) -> TileConfig:
  """Heuristic tiles for 8-bit-weight matmuls: narrow tiles for decode, 128x128x64 for large M.

  ``x_itemsize`` (bytes per activation element: 1 for int8/fp8, 2 or 4 for fused dynamic quantization) shrinks
  the pipeline until the tiles fit ``tile_smem_reason``'s budget.
  """
  block_n = 128 if n >= 128 else 64 if n >= 64 else 32 if n >= 32 else 16
  if m <= 16:
    cfg = TileConfig(block_m=16, block_n=min(block_n, 64), block_k=128, num_warps=4, num_stages=4)
  elif m <= 64:
    cfg = TileConfig(block_m=32 if m <= 32 else 64, block_n=block_n, block_k=128, num_warps=4, num_stages=4)
  else:
    cfg = TileConfig(block_m=128, block_n=block_n, block_k=64, num_warps=8, num_stages=3)
  while tile_smem_reason(cfg, x_itemsize, 1) is not None:
    if cfg.num_stages > 2:
      cfg = dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
    else:
      cfg = dataclasses.replace(cfg, block_k=cfg.block_k // 2)
  return cfg


def tile_autotune_configs() -> tuple[TileConfig, ...]:
  """Candidate tiles the GPU autotuner times for the 8-bit kernels."""
  return tuple(
      TileConfig(block_m=bm, block_n=bn, block_k=bk, num_warps=w, num_stages=s)
      for bm, bn, bk, w, s in ((16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (32, 128, 128, 4, 4),
                               (64, 128, 128, 4, 4), (128, 128, 64, 8, 3), (128, 128, 128, 8, 3),
                               (128, 256, 64, 8, 3), (64, 256, 128, 8, 3)))


def tile_smem_reason(cfg: TileConfig, x_itemsize: int, w_itemsize: int, budget: int = 160 * 1024) -> str | None:
  """Reason string when the pipelined x/w tiles of ``cfg`` exceed the shared-memory budget, else None."""
  smem = cfg.num_stages * cfg.block_k * (cfg.block_m * x_itemsize + cfg.block_n * w_itemsize)
  if smem > budget:
    return (f"{cfg} needs ~{smem // 1024} KiB of pipelined shared memory (> {budget // 1024} KiB); "
            "lower num_stages or the block sizes.")
  return None
