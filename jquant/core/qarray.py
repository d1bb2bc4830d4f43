"""QArray: a quantized array as a pytree. Data only; the math lives in `core/quantize.py`."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jquant.core.double_quant import DoubleQuantScale
from jquant.core.qtypes import QType
from jquant.core.spec import QuantSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
  """A quantized array: ``dequantize(qa) == (qvalue - zero_point) * scale`` broadcast over the spec's tiles.

  Attributes:
    qvalue: quantized values in the logical shape of the original array, dtype ``qtype.storage_dtype``
      (int8, int4, uint4, int2, float8_*, or uint8 codes for NF4). Sub-byte packing happens only in
      kernel-facing layouts (`core/packing.py`).
    scale: float scales with the same rank as ``qvalue`` (``spec.granularity`` tiles), or a `DoubleQuantScale`;
      microscaling qtypes: E8M0 block scales (MX) or a `jquant.core.mx.NVFP4Scale` (NVFP4).
    zero_point: integer zero points shaped like ``scale`` (asymmetric specs), else None.
    g_idx: int32 group index of each element along the group axis (GPTQ act-order), else None. When set,
      the scale row used by element ``k`` of the group axis is ``g_idx[k]``.
    qtype: the number format (static).
    spec: the QuantSpec it was made with (static).
    dtype: name of the original floating dtype; `dequantize` returns it by default (static).

  Invariants (checked by `validate_qarray`, not at construction, so that jax can rebuild the pytree with
  placeholder leaves under vmap): scale.ndim == qvalue.ndim and each dim of qvalue is a multiple of scale's.
  """

  qvalue: jax.Array
  scale: jax.Array | DoubleQuantScale
  zero_point: jax.Array | None = None
  g_idx: jax.Array | None = None
  qtype: QType = dataclasses.field(default=None, metadata=dict(static=True))
  spec: QuantSpec = dataclasses.field(default=None, metadata=dict(static=True))
  dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.qvalue.shape)

  @property
  def ndim(self) -> int:
    return self.qvalue.ndim

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def nbytes(self) -> int:
    """Storage bytes with sub-byte values counted packed: qvalue + scale + zero_point + g_idx."""
    n = math.ceil(self.size * self.qtype.bits / 8)
    s = self.scale           # a jax array, a DoubleQuantScale or an NVFP4Scale (abstract ones too: eval_shape)
    n += s.nbytes if hasattr(s, "nbytes") else math.prod(s.shape) * jnp.dtype(s.dtype).itemsize
    if self.zero_point is not None:
      n += math.ceil(self.zero_point.size * self.qtype.bits / 8)
    if self.g_idx is not None:
      n += self.g_idx.size * 4
    return int(n)

  def __repr__(self) -> str:
    return (f"QArray({self.qtype.name}, shape={self.shape}, granularity={self.spec.granularity}, "
            f"symmetric={self.spec.symmetric}, dtype={self.dtype})")


def validate_qarray(qa: QArray) -> None:
  """Checks the QArray invariants; raises ValueError naming the broken one."""
  if not isinstance(qa, QArray):
    raise TypeError(f"expected a jq.QArray, got {type(qa).__name__}.")
  if qa.qvalue.dtype != qa.qtype.storage_dtype:
    raise ValueError(f"QArray qvalue dtype {qa.qvalue.dtype} does not match {qa.qtype.name} storage "
                     f"{qa.qtype.storage_dtype}.")
  sshape = qa.scale.shape if not isinstance(qa.scale, DoubleQuantScale) else qa.scale.shape
  if len(sshape) != qa.ndim:
    raise ValueError(f"QArray scale rank {len(sshape)} != value rank {qa.ndim}; scales keep the value's rank.")
  for n, s in zip(qa.shape, sshape):
    if qa.g_idx is None and n % s:
      raise ValueError(f"QArray value shape {qa.shape} is not tiled by scale shape {tuple(sshape)}.")
  if qa.zero_point is not None and tuple(qa.zero_point.shape) != tuple(sshape):
    raise ValueError(f"QArray zero_point shape {qa.zero_point.shape} != scale shape {tuple(sshape)}.")
