"""QArray <-> `IntRecord` (the neutral record the format codecs speak), exact in both directions.

A jquant symmetric signed kernel (``INT4``/``INT8``/``INT2``, codes q, no zero point) maps to unsigned codes
``q + 2^(b-1)`` with the implicit zero ``2^(b-1)`` (GPTQ "sym", compressed-tensors symmetric); an asymmetric
unsigned kernel (``UINT4``/``UINT8``/``UINT2`` with an integer zero point) maps to codes and zeros as they are.
Supported granularities on an (in, out) = (K, N) kernel: ``PerGroup(axis=0, size=G)`` (scale (K/G, N), or
(nG, N) with an act-order ``g_idx``) and ``PerChannel(axis=-1)`` (scale (1, N); group_size -1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jquant.core import granularity as gr
from jquant.core import qtypes
from jquant.core.double_quant import DoubleQuantScale
from jquant.core.qarray import QArray
from jquant.core.spec import QuantSpec
from jquant.interop.codecs import IntRecord

__all__ = ["qarray_to_record", "record_to_qarray"]

_SIGNED = {2: qtypes.INT2, 4: qtypes.INT4, 8: qtypes.INT8}
_UNSIGNED = {2: qtypes.UINT2, 4: qtypes.UINT4, 8: qtypes.UINT8}


def qarray_to_record(qa: QArray, name: str) -> IntRecord:
  """The record of a weight-only integer kernel; ValueError (naming what could hold it) otherwise."""
  qt = qa.qtype
  if qt.is_lut:
    raise ValueError(f"{name}: {qt.name} (a lookup-table format) has no Hugging Face integer layout here; NF4 is "
                     f"bitsandbytes' format, which jquant does not export. Keep the jquant checkpoint, or re-quantize "
                     f"with an integer grid (e.g. --method gptq --bits 4).")
  if qt.is_float:
    raise ValueError(f"{name}: {qt.name} weights are compressed-tensors 'float-quantized' (FP8), which this exporter "
                     f"does not write yet; keep the jquant checkpoint.")
  if qt.bits not in (2, 4, 8):
    raise ValueError(f"{name}: {qt.bits}-bit ({qt.name}) weights: GPTQ's format can hold 3-bit codes, but jquant "
                     f"exports only 2/4/8-bit (gptq), 4/8-bit (compressed-tensors) and 4-bit (awq).")
  if isinstance(qa.scale, DoubleQuantScale):
    raise ValueError(f"{name}: double-quantized scales have no GPTQ/AWQ/compressed-tensors layout; quantize without "
                     f"double_quant to export.")
  if qa.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D (in, out) kernel, got shape {qa.shape}.")
  k, n = qa.shape
  g = qa.spec.granularity
  if isinstance(g, gr.PerGroup) and g.axis % 2 == 0 and not g.batch_axes:
    group_size = g.size
  elif isinstance(g, gr.PerChannel) and g.axis % 2 == 1 and not g.batch_axes:
    group_size = -1
  else:
    raise ValueError(f"{name}: granularity {g} has no GPTQ/AWQ/compressed-tensors layout; use PerGroup(axis=0, size=G) "
                     f"(groups along the input axis) or PerChannel(axis=-1).")
  q = np.asarray(qa.qvalue).astype(np.int32)
  scale = np.asarray(qa.scale)
  if qa.zero_point is None:
    if not qt.signed:
      raise ValueError(f"{name}: unsigned {qt.name} without a zero point has no HF layout.")
    codes, zero = q + 2 ** (qt.bits - 1), None
  else:
    if qt.signed:
      raise ValueError(f"{name}: a signed {qt.name} kernel with a zero point has no HF layout; use an unsigned "
                       f"qtype (e.g. jq.UINT4) for asymmetric weights.")
    codes, zero = q, np.asarray(qa.zero_point).astype(np.uint8)
  g_idx = None if qa.g_idx is None else np.asarray(qa.g_idx).astype(np.int32)
  if g_idx is None and group_size > 0 and k % group_size:
    raise ValueError(f"{name}: in_features {k} is not a multiple of the group size {group_size}.")
  return IntRecord(codes=codes.astype(np.uint8), scale=scale, zero=zero, g_idx=g_idx, bits=qt.bits,
                   group_size=group_size)


def record_to_qarray(r: IntRecord, dtype: str = "float32") -> QArray:
  """A weight-only QArray holding exactly the record's codes, scales, zeros and g_idx (no float round trip)."""
  k, n = r.shape
  gran = gr.PerChannel(axis=-1) if r.group_size == -1 else gr.PerGroup(axis=0, size=r.group_size)
  scale_dtype = str(np.dtype(r.scale.dtype))
  if scale_dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"scales of dtype {scale_dtype} are not supported (float32, bfloat16 or float16).")
  if r.zero is None:
    qt = _SIGNED[r.bits]
    q = (r.codes.astype(np.int32) - 2 ** (r.bits - 1))
    spec = QuantSpec(qtype=qt, granularity=gran, symmetric=True, scale_dtype=scale_dtype)
    zp = None
  else:
    qt = _UNSIGNED[r.bits]
    q = r.codes
    spec = QuantSpec(qtype=qt, granularity=gran, symmetric=False, scale_dtype=scale_dtype)
    zp = jnp.asarray(r.zero.astype(np.int32)).astype(qt.storage_dtype)
  return QArray(qvalue=jnp.asarray(q.astype(np.int32)).astype(qt.storage_dtype), scale=jnp.asarray(r.scale),
                zero_point=zp, g_idx=None if r.g_idx is None else jnp.asarray(r.g_idx, jnp.int32), qtype=qt,
                spec=spec, dtype=dtype)
