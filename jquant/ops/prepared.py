"""Kernel-layout weights: convert a Flax-layout `QArray` (K, N) once, so serving does not repack per call.

Layouts (the Pallas kernels' contracts, see ``pallas_kernels/*/reference.py``):
* ``"int4"`` (INT4 / UINT4, PerGroup along K, PerChannel along N, or PerTensor): ``w`` uint8 (N, K // 2),
  K-contiguous, element 2i in the low nibble; ``scale`` float32 (K // G, N); optional int8 ``zero_point``
  (K // G, N); optional int32 act-order ``g_idx`` (K,).
* ``"int8"`` / ``"fp8"`` (INT8 / FP8 symmetric, PerChannel along N or PerTensor): ``w`` (N, K) int8 or float8,
  K-contiguous; ``scale`` float32 (1, N).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jquant.core import packing
from jquant.core.double_quant import DoubleQuantScale
from jquant.core.granularity import PerChannel, PerGroup, PerTensor
from jquant.core.qarray import QArray

_KIND_BY_QTYPE = {"int4": "int4", "uint4": "int4", "int8": "int8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PreparedWeight:
  """A quantized (K, N) weight in a Pallas kernel layout (see the module docstring); accepted by `qdot`.

  Attributes:
    w: packed int4 uint8 (N, K // 2), or int8 / float8 (N, K).
    scale: float (K // G, N) for int4, (1, N) for int8 / fp8, in the QArray's scale dtype.
    zero_point: int8 (K // G, N) (asymmetric int4 only), else None.
    g_idx: int32 (K,) act-order scale row per input channel (int4 only), else None.
    kind: ``"int4"``, ``"int8"`` or ``"fp8"`` (static).
    group_size: G, input channels per scale row (static; K for per-channel scales).
    signed: int4 nibbles are two's complement (static).
    shape: logical (K, N) (static).
    dtype: name of the original float dtype (static).
  """

  w: jax.Array
  scale: jax.Array
  zero_point: jax.Array | None = None
  g_idx: jax.Array | None = None
  kind: str = dataclasses.field(default="int4", metadata=dict(static=True))
  group_size: int = dataclasses.field(default=0, metadata=dict(static=True))
  signed: bool = dataclasses.field(default=True, metadata=dict(static=True))
  shape: tuple[int, int] = dataclasses.field(default=(0, 0), metadata=dict(static=True))
  dtype: str = dataclasses.field(default="bfloat16", metadata=dict(static=True))

  def __repr__(self) -> str:
    extra = "".join(f", {n}" for n, v in (("zero_point", self.zero_point), ("g_idx", self.g_idx)) if v is not None)
    return f"PreparedWeight({self.kind}, shape={self.shape}, group_size={self.group_size}{extra})"


def _group_size(qa: QArray) -> tuple[int | None, str | None]:
  """(G, None) when the granularity maps onto (K // G, N) scales, else (None, reason)."""
  g = qa.spec.granularity
  k = qa.shape[0]
  if isinstance(g, PerGroup) and g.axis % 2 == 0 and not g.batch_axes:
    return g.size, None
  if isinstance(g, PerChannel) and g.axis % 2 == 1 and not g.batch_axes:
    return k, None
  if isinstance(g, PerTensor) and not g.batch_axes:
    return k, None
  return None, (f"granularity {g} has no kernel layout; kernels take PerGroup(axis=0) (int4 only), "
                "PerChannel(axis=-1) or PerTensor() weights of shape (K, N)")


def layout_reasons(qa: QArray) -> list[str]:
  """Why ``qa`` cannot be converted to a kernel layout (empty when `prepare` accepts it)."""
  if qa.ndim != 2:
    return [f"weight has shape {qa.shape}; kernels take 2-D (K, N) weights"]
  kind = _KIND_BY_QTYPE.get(qa.qtype.name)
  if kind is None:
    return [f"no Pallas kernel for {qa.qtype.name} weights (kernels: int4, uint4, int8, fp8_e4m3, fp8_e5m2)"]
  reasons = []
  g, why = _group_size(qa)
  if why:
    reasons.append(why)
  elif kind != "int4" and g != qa.shape[0]:
    reasons.append(f"{qa.qtype.name} kernels take per-channel or per-tensor scales, got {qa.spec.granularity}")
  if kind != "int4" and qa.zero_point is not None:
    reasons.append(f"asymmetric {qa.qtype.name} (zero points) has no kernel; quantize symmetrically")
  if kind != "int4" and qa.g_idx is not None:
    reasons.append(f"act-order g_idx is only supported by the int4 kernel, got {qa.qtype.name}")
  if kind == "int4" and qa.shape[0] % 2:
    reasons.append(f"K={qa.shape[0]} is odd; int4 packs two values per byte along K (pad K to even)")
  return reasons


def _to_layout(qa: QArray) -> PreparedWeight:
  k, n = qa.shape
  kind = _KIND_BY_QTYPE[qa.qtype.name]
  g, _ = _group_size(qa)
  # Keep the stored scale dtype (e.g. bfloat16 halves the kernel's scale traffic); double-quantized -> float32.
  raw = qa.scale if not isinstance(qa.scale, DoubleQuantScale) else qa.scale.dequantize()
  scale = jnp.broadcast_to(raw if jnp.issubdtype(raw.dtype, jnp.floating) else raw.astype(jnp.float32), (k // g, n))
  if kind == "int4":
    zp = None if qa.zero_point is None else jnp.broadcast_to(qa.zero_point.astype(jnp.int8), (k // g, n))
    return PreparedWeight(
        w=packing.pack(qa.qvalue.T, bits=4, axis=-1), scale=scale, zero_point=zp,
        g_idx=None if qa.g_idx is None else qa.g_idx.astype(jnp.int32), kind=kind, group_size=g,
        signed=qa.qtype.signed, shape=(k, n), dtype=qa.dtype)
  return PreparedWeight(w=qa.qvalue.T, scale=scale, kind=kind, group_size=k, signed=True, shape=(k, n),
                        dtype=qa.dtype)


_to_layout_jit = jax.jit(_to_layout)


def prepare(qa: QArray) -> PreparedWeight:
  """Converts a Flax-layout (K, N) `QArray` to its kernel layout once (e.g. at model load).

  Args:
    qa: quantized weight of logical shape (K, N).

  Returns:
    A `PreparedWeight`; ``qdot(x, prepare(qa))`` equals ``qdot(x, qa)`` without a per-call repack.

  Raises:
    TypeError: ``qa`` is not a QArray.
    NotImplementedError: no kernel layout fits ``qa``; the message lists every reason (use ``qdot`` with the
      QArray itself, which falls back to XLA).
  """
  if not isinstance(qa, QArray):
    raise TypeError(f"prepare: expected a jq.QArray weight of shape (K, N), got {type(qa).__name__}.")
  if reasons := layout_reasons(qa):
    raise NotImplementedError(f"prepare: {qa!r} has no kernel layout: " + "; ".join(reasons) + ".")
  return _to_layout_jit(qa)


def dequantize_prepared(pw: PreparedWeight, dtype) -> jax.Array:
  """The (K, N) weight a `PreparedWeight` stands for, computed in float32 and cast to ``dtype`` (XLA)."""
  if pw.kind == "int4":
    q = packing.unpack(pw.w, bits=4, axis=-1, signed=pw.signed, dtype=jnp.int32).T.astype(jnp.float32)
    k = q.shape[0]
    rows = jnp.arange(k) // pw.group_size if pw.g_idx is None else pw.g_idx
    if pw.zero_point is not None:
      q = q - pw.zero_point.astype(jnp.float32)[rows]
    return (q * pw.scale.astype(jnp.float32)[rows]).astype(dtype)
  return (pw.w.T.astype(jnp.float32) * pw.scale.astype(jnp.float32)).astype(dtype)
