"""The jnp specification of the W4A16 matmul: unpack, dequantize in float32, matmul with float32 accumulation.

Weight layout (the kernel's): ``w_packed`` is uint8 of shape (N, K // 2), K-contiguous; byte ``i`` of a row holds
element ``k = 2i`` in its low nibble (bits 0-3) and ``k = 2i + 1`` in its high nibble (bits 4-7). Signed weights are
int4 two's complement (-8..7); unsigned weights are 0..15. ``scales`` has shape (K // G, N); optional integer
``zeros`` has the same shape; ``dequant[k, n] = (q[n, k] - zeros[g(k), n]) * scales[g(k), n]`` with
``g(k) = k // G``, or ``g(k) = g_idx[k]`` when an act-order ``g_idx`` (K,) is given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def unpack_int4(w_packed: jax.Array, *, signed: bool) -> jax.Array:
  """Unpacks uint8 (N, K // 2) into int32 (N, K): low nibble first, sign-extended when ``signed``."""
  b = w_packed.astype(jnp.int32)
  lo, hi = b & 0xF, (b >> 4) & 0xF
  if signed:
    lo, hi = (lo ^ 8) - 8, (hi ^ 8) - 8
  q = jnp.stack([lo, hi], axis=-1)
  return q.reshape(*w_packed.shape[:-1], w_packed.shape[-1] * 2)


def dequantize_int4(
    w_packed: jax.Array,
    scales: jax.Array,
    zeros: jax.Array | None = None,
    g_idx: jax.Array | None = None,
    *,
    group_size: int,
    signed: bool = True,
) -> jax.Array:
  """Dequantized weight, float32 of shape (K, N) (already transposed for ``x @ w``)."""
  q = unpack_int4(w_packed, signed=signed).T.astype(jnp.float32)  # (K, N)
  k = q.shape[0]
  rows = jnp.arange(k) // group_size if g_idx is None else g_idx
  s = scales.astype(jnp.float32)[rows]
  if zeros is not None:
    q = q - zeros.astype(jnp.float32)[rows]
  return q * s


def reference(
    x: jax.Array,
    w_packed: jax.Array,
    scales: jax.Array,
    zeros: jax.Array | None = None,
    g_idx: jax.Array | None = None,
    *,
    group_size: int,
    signed: bool = True,
) -> jax.Array:
  """``x @ dequant(W)`` with float32 accumulation.

  Args:
    x: activations (M, K), bfloat16 or float16.
    w_packed: uint8 (N, K // 2), two int4 values per byte (see module docstring).
    scales: (K // group_size, N) float.
    zeros: optional integer zero points (K // group_size, N).
    g_idx: optional int32 (K,) act-order group index per input channel.
    group_size: G, the number of input channels per scale row.
    signed: whether nibbles are two's-complement int4 (else unsigned 0..15).

  Returns:
    (M, N) in ``x.dtype``.
  """
  w = dequantize_int4(w_packed, scales, zeros, g_idx, group_size=group_size, signed=signed)
  out = jnp.dot(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST)
  return out.astype(x.dtype)
