"""Double quantization of scales (QLoRA): the scales themselves stored as int8 codes, in blocks.

Scales are positive and spread over orders of magnitude when a weight has outlier channels (x300 is common), so
they are quantized in the log domain (``kind="log2"``, the default): the scales (any shape) are flattened, and in
each block of ``block`` consecutive scales (the last block padded with its last value) ``log2(scale)`` is quantized
to int8 codes in [-127, 127] with a per-block ``offset`` (the centre of the block's log range) and ``scale`` (step):
``scale_i = 2 ** (offset_b + code_i * step_b)``. Every dequantized scale is positive, and its relative error is at
most ``2 ** (step_b / 2) - 1`` (0.25% for scales spanning 2x in a block, 1.1% for 300x), whatever the outliers.
For NF4 with 64-element groups and 256-scale blocks this costs 8/64 + 64/(64*256) bits per weight instead of 32/64.

``kind="linear"`` is the earlier format (one global mean ``offset`` and a symmetric int8 grid of ``scale - offset``
per block); it is only read from old checkpoints: with outliers in a block its step is so coarse that small scales
come back near zero or negative (sign flips).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_KINDS = ("log2", "linear")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DoubleQuantScale:
  """An int8-quantized scale tensor. ``dequantize()`` returns the float32 scales of shape ``shape``."""

  qvalue: jax.Array        # (P,) int8, P = ceil(n / block) * block
  scale: jax.Array         # (P // block,) float32: log2 step per block ("log2"), linear step ("linear")
  offset: jax.Array        # (P // block,) float32 log2 centre per block ("log2"); () float32 global mean ("linear")
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  kind: str = dataclasses.field(default="log2", metadata=dict(static=True))

  @property
  def nbytes(self) -> int:
    return int(self.qvalue.size + 4 * self.scale.size + 4 * max(self.offset.size, 1))

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def block(self) -> int:
    return self.qvalue.shape[0] // self.scale.shape[0]

  def dequantize(self) -> jax.Array:
    n = 1
    for d in self.shape:
      n *= d
    c = self.qvalue.astype(jnp.float32).reshape(-1, self.block)
    if self.kind == "linear":
      v = c * self.scale[:, None]
      return (v.reshape(-1)[:n] + self.offset).reshape(self.shape)
    v = jnp.exp2(self.offset[:, None] + c * self.scale[:, None])
    return v.reshape(-1)[:n].reshape(self.shape)


def double_quantize(scale: jax.Array, block: int = 256) -> DoubleQuantScale:
  """Quantizes a positive float scale tensor to int8 log2 codes in blocks of ``block`` (see the module doc).

  A NaN/inf scale (a tile with non-finite values) stays NaN in its block, never a finite scale.
  """
  scale = scale.astype(jnp.float32)
  flat = scale.reshape(-1)
  n = flat.shape[0]
  pad = (-n) % block
  lg = jnp.log2(jnp.pad(flat, (0, pad), mode="edge")).reshape(-1, block)
  lo, hi = jnp.min(lg, axis=-1), jnp.max(lg, axis=-1)
  bad = jnp.any(~jnp.isfinite(lg), axis=-1)            # min/max may drop NaN: poison the block explicitly
  centre = jnp.where(bad, jnp.nan, (lo + hi) / 2)
  step = jnp.where(hi > lo, (hi - lo) / 254.0, 1.0)
  q = jnp.clip(jnp.round((lg - centre[:, None]) / step[:, None]), -127, 127)
  q = jnp.where(jnp.isfinite(q), q, 0).astype(jnp.int8)
  return DoubleQuantScale(qvalue=q.reshape(-1), scale=step, offset=centre, shape=tuple(scale.shape), kind="log2")
