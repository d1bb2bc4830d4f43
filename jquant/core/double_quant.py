"""Double quantization of scales (QLoRA): the scales themselves stored as int8 with a float32 scale per block.

The scales (any shape) are flattened, their mean is stored as an offset, and ``scale - offset`` is quantized
symmetrically to int8 in blocks of ``block`` consecutive values (the last block zero-padded). For NF4 with
64-element groups and 256-scale blocks this costs 8/64 + 32/(64*256) bits per weight instead of 32/64.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DoubleQuantScale:
  """An int8-quantized scale tensor. ``dequantize()`` returns the float32 scales of shape ``shape``."""

  qvalue: jax.Array        # (P,) int8, P = ceil(n / block) * block
  scale: jax.Array         # (P // block,) float32
  offset: jax.Array        # () float32
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

  @property
  def nbytes(self) -> int:
    return int(self.qvalue.size + 4 * self.scale.size + 4)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def dequantize(self) -> jax.Array:
    block = self.qvalue.shape[0] // self.scale.shape[0]
    v = self.qvalue.astype(jnp.float32).reshape(-1, block) * self.scale[:, None]
    n = 1
    for d in self.shape:
      n *= d
    return (v.reshape(-1)[:n] + self.offset).reshape(self.shape)


def double_quantize(scale: jax.Array, block: int = 256) -> DoubleQuantScale:
  """Quantizes a float scale tensor to int8 blocks around its mean."""
  scale = scale.astype(jnp.float32)
  flat = scale.reshape(-1)
  n = flat.shape[0]
  offset = jnp.mean(flat)
  pad = (-n) % block
  c = jnp.pad(flat - offset, (0, pad)).reshape(-1, block)
  amax = jnp.max(jnp.abs(c), axis=-1)
  s = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(c / s[:, None]), -127, 127).astype(jnp.int8)
  return DoubleQuantScale(qvalue=q.reshape(-1), scale=s, offset=offset, shape=tuple(scale.shape))
