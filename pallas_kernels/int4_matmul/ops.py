"""W4A16 matmul entry point: ``Config``, ``supports()``, ``default_config()``, autotuning and the padded wrapper."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.int4_matmul import kernel as _kernel

_X_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# Conservative shared-memory budget (bytes) for the pipelined x and w tiles: below A100's 163 KiB per block.
_SMEM_BUDGET = 160 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Config:
  """Tiling and launch parameters of the int4 kernel.

  Attributes:
    block_m: rows of x per program (power of 2, >= 16: the MMA minimum).
    block_n: output columns per program (power of 2, >= 16).
    block_k: K step of the inner loop (power of 2, >= 32).
    split_k: number of programs sharing one output tile along K (partial sums are added afterwards); > 1 helps
      small-M decode fill the GPU.
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth.
    fast_convert: convert int4 to bf16/fp16 with exponent bit tricks instead of int-to-float instructions.
  """

  block_m: int
  block_n: int
  block_k: int
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 3
  fast_convert: bool = True

  def __post_init__(self):
    for name, low in (("block_m", 16), ("block_n", 16), ("block_k", 32)):
      v = getattr(self, name)
      if not (isinstance(v, int) and _common.is_power_of_2(v) and v >= low):
        raise ValueError(f"Config.{name}={v!r}; expected a power of 2 >= {low}.")
    if not (isinstance(self.split_k, int) and self.split_k >= 1):
      raise ValueError(f"Config.split_k={self.split_k!r}; expected an int >= 1.")
    if self.num_warps not in (1, 2, 4, 8, 16):
      raise ValueError(f"Config.num_warps={self.num_warps!r}; expected one of 1, 2, 4, 8, 16.")
    if not (isinstance(self.num_stages, int) and self.num_stages >= 1):
      raise ValueError(f"Config.num_stages={self.num_stages!r}; expected an int >= 1.")


def _check_inputs(x, w_packed, scales, zeros, g_idx, group_size):
  """Raises ValueError/TypeError for inconsistent inputs (bad input, not a backend limitation)."""
  if x.ndim != 2:
    raise ValueError(f"int4_matmul: x must be 2-D (M, K); got shape {x.shape}. Reshape leading dims into M.")
  if w_packed.ndim != 2 or w_packed.dtype != jnp.uint8:
    raise TypeError(f"int4_matmul: w_packed must be uint8 (N, K // 2); got {w_packed.dtype}{w_packed.shape}.")
  m, k = x.shape
  n = w_packed.shape[0]
  if w_packed.shape[1] * 2 != k:
    raise ValueError(f"int4_matmul: w_packed {w_packed.shape} holds K={w_packed.shape[1] * 2}, but x has K={k}.")
  if not (isinstance(group_size, int) and group_size > 0 and k % group_size == 0):
    raise ValueError(f"int4_matmul: group_size={group_size!r} must be a positive int dividing K={k}.")
  if scales.shape != (k // group_size, n):
    raise ValueError(f"int4_matmul: scales shape {scales.shape}; expected (K // group_size, N) = "
                     f"{(k // group_size, n)}.")
  if zeros is not None:
    if zeros.shape != scales.shape:
      raise ValueError(f"int4_matmul: zeros shape {zeros.shape} must equal scales shape {scales.shape}.")
    if not jnp.issubdtype(zeros.dtype, jnp.integer):
      raise TypeError(f"int4_matmul: zeros must be integer zero points; got {zeros.dtype}.")
  if g_idx is not None:
    if g_idx.shape != (k,) or not jnp.issubdtype(g_idx.dtype, jnp.integer):
      raise ValueError(f"int4_matmul: g_idx must be integer of shape (K,) = ({k},); got {g_idx.dtype}{g_idx.shape}.")


def supports(
    x: jax.Array,
    w_packed: jax.Array,
    scales: jax.Array,
    zeros: jax.Array | None = None,
    g_idx: jax.Array | None = None,
    *,
    group_size: int,
    signed: bool = True,
    config: Config | None = None,
) -> str | None:
  """Returns why the kernel cannot run these (valid) inputs, or None when it can.

  Works on arrays or ``jax.ShapeDtypeStruct``s. Inputs must already pass shape validation.
  """
  del signed, zeros, g_idx
  if jnp.dtype(x.dtype) not in _X_DTYPES:
    return f"x.dtype={x.dtype}; the int4 kernel needs bfloat16 or float16 activations (cast x first)."
  if not jnp.issubdtype(scales.dtype, jnp.floating):
    return f"scales.dtype={scales.dtype}; need a floating dtype."
  cfg = config or default_config(x.shape[0], w_packed.shape[0], x.shape[1], group_size=group_size)
  smem = cfg.num_stages * (cfg.block_m * cfg.block_k * x.dtype.itemsize + cfg.block_n * cfg.block_k // 2)
  if smem > _SMEM_BUDGET:
    return (f"{cfg} needs ~{smem // 1024} KiB of pipelined shared memory (> {_SMEM_BUDGET // 1024} KiB); "
            "lower num_stages or the block sizes.")
  return None


def default_config(m: int, n: int, k: int, *, group_size: int, has_g_idx: bool = False,
                   num_sms: int = 132) -> Config:
  """Heuristic config: split-K decode tiles for M <= 16, square MMA tiles for large M.

  Args:
    m, n, k: problem size (x is (m, k), output (m, n)).
    group_size: scale group size G; ``block_k`` divides it when possible so each K step has one scale row.
    has_g_idx: act-order weights (per-element scale gather; block_k 64).
    num_sms: streaming multiprocessors to fill (H100 SXM: 132); split-K is sized from it.
  """
  if has_g_idx:
    block_k = 64
  else:
    block_k = _common.largest_divisor(group_size, (128, 64, 32)) or 64
  n16 = _common.round_up(n, 16)
  if m <= 16:
    block_m, block_n, warps, stages = 16, 64 if n16 % 64 == 0 or n16 > 4096 else 32, 4, 4
    if n16 < block_n:
      block_n = 16 if n16 <= 16 else 32
    tiles = _common.cdiv(n, block_n)
    k_steps = _common.cdiv(k, block_k)
    split_k = 1
    while tiles * split_k * 2 <= 2 * num_sms and k_steps // (split_k * 2) >= 4:
      split_k *= 2
    return Config(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k,
                  num_warps=warps, num_stages=stages)
  if m <= 64:
    return Config(block_m=_common.round_up(1 << (m - 1).bit_length(), 16), block_n=128 if n >= 128 else 64,
                  block_k=block_k, num_warps=4, num_stages=4)
  return Config(block_m=128, block_n=128 if n >= 128 else 64, block_k=min(block_k, 64), num_warps=8,
                num_stages=3)


def autotune_configs() -> tuple[Config, ...]:
  """The small config list the GPU autotuner times."""
  out = []
  for bm, bn, bk, sk, w, st in (
      (16, 64, 128, 1, 4, 4), (16, 64, 128, 4, 4, 4), (16, 128, 128, 2, 4, 4), (16, 32, 128, 4, 4, 4),
      (16, 64, 64, 8, 4, 4), (32, 128, 64, 1, 4, 4), (64, 128, 64, 1, 4, 4), (64, 64, 64, 1, 4, 4),
      (128, 128, 64, 1, 8, 3), (128, 128, 32, 1, 8, 4), (128, 64, 64, 1, 4, 4), (64, 256, 64, 1, 8, 3)):
    out.append(Config(block_m=bm, block_n=bn, block_k=bk, split_k=sk, num_warps=w, num_stages=st))
  return tuple(out)


@functools.partial(jax.jit, static_argnames=("group_size", "signed", "config", "interpret"))
def _run(x, w_packed, scales, zeros, g_idx, *, group_size, signed, config, interpret):
  m, k = x.shape
  n = w_packed.shape[0]
  cfg = config
  np_ = _common.round_up(n, cfg.block_n)
  kp = _common.round_up(k, cfg.block_k * cfg.split_k)
  kg = _common.cdiv(kp, group_size)
  x = _common.pad_axis(x, 1, kp)
  w_packed = _common.pad_axis(_common.pad_axis(w_packed, 0, np_), 1, kp // 2)
  scales = _common.pad_axis(_common.pad_axis(scales, 1, np_, 1.0), 0, kg, 1.0)
  if zeros is not None:
    if zeros.dtype not in (jnp.int8, jnp.int16, jnp.int32):
      zeros = zeros.astype(jnp.int8 if zeros.dtype.itemsize == 1 or zeros.dtype == jnp.int4 else jnp.int32)
    zeros = _common.pad_axis(_common.pad_axis(zeros, 1, np_), 0, kg)
  if g_idx is not None:
    g_idx = _common.pad_axis(g_idx.astype(jnp.int32), 0, kp)
  out = _kernel.int4_matmul_triton(
      x, w_packed, scales, zeros, g_idx, group_size=group_size, signed=signed, block_m=cfg.block_m,
      block_n=cfg.block_n, block_k=cfg.block_k, split_k=cfg.split_k, num_warps=cfg.num_warps,
      num_stages=cfg.num_stages, fast_convert=cfg.fast_convert, interpret=interpret)
  if cfg.split_k > 1:
    out = out.sum(axis=0).astype(x.dtype)
  return out if n == np_ else out[:, :n]


def int4_matmul(
    x: jax.Array,
    w_packed: jax.Array,
    scales: jax.Array,
    zeros: jax.Array | None = None,
    g_idx: jax.Array | None = None,
    *,
    group_size: int,
    signed: bool = True,
    config: Config | None = None,
    autotune: bool = False,
    interpret: bool = False,
) -> jax.Array:
  """``x @ dequant(W)`` for int4 weights with group-wise scales, float32 accumulation.

  Layout and dequantization are specified in ``reference.py``. Any M works without copies (the kernel masks the
  last row block); N and K that are not multiples of ``block_n`` / ``block_k * split_k`` are zero-padded here,
  which costs one copy of the weight per call (choose a config that divides them, or pre-pad the weight).

  Args:
    x: (M, K) bfloat16 or float16.
    w_packed: uint8 (N, K // 2), low nibble = even k.
    scales: (K // group_size, N) float scales.
    zeros: optional integer zero points (K // group_size, N); dequant is ``(q - zeros) * scales``.
    g_idx: optional int32 (K,) act-order scale row per input channel.
    group_size: G.
    signed: int4 two's-complement nibbles (True) or unsigned 0..15 (False).
    config: tiling; ``default_config`` when None.
    autotune: on a GPU, time ``autotune_configs()`` once per problem (eagerly, on concrete inputs) and use
      the fastest; under jit the winner of an earlier eager call is reused.
    interpret: run the Pallas interpreter (CPU testing).

  Returns:
    (M, N) in ``x.dtype``.

  Raises:
    ValueError, TypeError: inconsistent shapes or dtypes.
    NotImplementedError: valid inputs the kernel cannot run; the message carries the ``supports()`` reason.
  """
  _check_inputs(x, w_packed, scales, zeros, g_idx, group_size)
  m, k = x.shape
  n = w_packed.shape[0]
  return _common.dispatch(
      "int4_matmul", functools.partial(_run, group_size=group_size, signed=signed), (x, w_packed, scales, zeros, g_idx),
      n=n, out_dtype=x.dtype, config=config, tune=autotune, interpret=interpret, candidates=autotune_configs(),
      default=default_config(m, n, k, group_size=group_size, has_g_idx=g_idx is not None),
      key=("int4", x.shape, str(x.dtype), n, group_size, zeros is not None, g_idx is not None, signed),
      supports=lambda c: supports(x, w_packed, scales, zeros, g_idx, group_size=group_size, signed=signed, config=c))
