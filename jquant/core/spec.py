"""QuantSpec: the full, validated description of how to quantize one tensor."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jquant.core import calibration_methods as cm
from jquant.core import granularity as gr
from jquant.core.qtypes import QType

_SCALE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec:
  """How to quantize a tensor. Frozen and hashable: pass it as a `jax.jit` static argument.

  Attributes:
    qtype: the number format, e.g. ``jq.INT4``.
    granularity: which elements share a scale, e.g. ``jq.PerGroup(axis=0, size=128)``.
    symmetric: symmetric (no zero point) or asymmetric (integer zero point; real 0.0 stays exact).
      Only integer qtypes can be asymmetric.
    calibration: how the range is picked; defaults to ``AbsMax()`` (symmetric) or ``MinMax()`` (asymmetric).
    stochastic_rounding: round stochastically (needs a ``key`` at quantize time; integer qtypes only);
      otherwise round half to even.
    double_quant: quantize the scales themselves to int8 (blocks of ``double_quant_block``, QLoRA-style).
    double_quant_block: block size of the second-level quantization.
    scale_dtype: storage dtype of the scales (``"float32"``, ``"bfloat16"``, ``"float16"``); quantization uses
      the stored (rounded) scale so that dequantize matches exactly. Microscaling qtypes (``jq.MXFP4`` ...) store
      their format's scale dtype (``qtype.scale_format``), which the default "float32" is replaced by.

  Example:
    >>> spec = QuantSpec(qtype=INT4, granularity=PerGroup(axis=0, size=128), symmetric=False)
  """

  qtype: QType
  granularity: gr.Granularity = gr.PerChannel(axis=-1)
  symmetric: bool = True
  calibration: cm.CalibrationMethod | None = None
  stochastic_rounding: bool = False
  double_quant: bool = False
  double_quant_block: int = 256
  scale_dtype: str = "float32"

  def __post_init__(self):
    if not isinstance(self.qtype, QType):
      raise TypeError(f"QuantSpec(qtype={self.qtype!r}): expected a jq QType such as jq.INT8 or jq.INT4.")
    if not isinstance(self.granularity, gr.GRANULARITIES):
      raise TypeError(f"QuantSpec(granularity={self.granularity!r}): expected one of "
                      "jq.PerTensor(), jq.PerChannel(axis), jq.PerGroup(axis, size), jq.PerToken(), jq.PerBlock(shape).")
    for name in ("symmetric", "stochastic_rounding", "double_quant"):
      v = getattr(self, name)
      if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"QuantSpec({name}={v!r}): {name} must be True or False, got {type(v).__name__} (a string "
                        f"such as 'no' is truthy and would be silently read as True).")
      object.__setattr__(self, name, bool(v))
    b = self.double_quant_block
    if not isinstance(b, (int, np.integer)) or isinstance(b, (bool, np.bool_)):
      raise TypeError(f"QuantSpec(double_quant_block={b!r}) must be an int such as 256, got {type(b).__name__}.")
    object.__setattr__(self, "double_quant_block", int(b))
    if self.qtype.is_mx:
      from jquant.core.mx import check_mx_spec
      if self.scale_dtype not in ("float32", self.qtype.scale_format):
        raise ValueError(f"QuantSpec(scale_dtype={self.scale_dtype!r}): {self.qtype.name} stores its scales as "
                         f"{self.qtype.scale_format}; leave scale_dtype at its default.")
      object.__setattr__(self, "scale_dtype", self.qtype.scale_format)
      if self.calibration is None:
        object.__setattr__(self, "calibration", cm.AbsMax())
      check_mx_spec(self)
    elif not isinstance(self.scale_dtype, str):
      raise TypeError(f"QuantSpec(scale_dtype={self.scale_dtype!r}) must be one of the strings {_SCALE_DTYPES}.")
    if self.calibration is None:
      object.__setattr__(self, "calibration", cm.AbsMax() if self.symmetric else cm.MinMax())
    if not isinstance(self.calibration, cm.CALIBRATION_METHODS):
      raise TypeError(f"QuantSpec(calibration={self.calibration!r}): expected jq.AbsMax(), jq.MinMax(), "
                      "jq.Percentile(q), jq.MSE(grid), jq.KL(bins) or jq.EMA(decay).")
    if not self.symmetric and not self.qtype.is_int:
      raise ValueError(f"QuantSpec: {self.qtype.name} has no zero point, so it must be symmetric; "
                       "use symmetric=True (or an integer qtype such as jq.UINT4 for asymmetric).")
    if self.symmetric and self.qtype.is_int and not self.qtype.signed:
      raise ValueError(f"QuantSpec: unsigned {self.qtype.name} cannot hold a symmetric grid around 0; use "
                       f"symmetric=False (asymmetric, with a zero point) or the signed qtype (e.g. jq.INT4).")
    if self.symmetric and isinstance(self.calibration, cm.MinMax):
      raise ValueError("QuantSpec(symmetric=True, calibration=MinMax()): MinMax is an asymmetric range; "
                       "use calibration=AbsMax() or symmetric=False.")
    if not self.symmetric and isinstance(self.calibration, cm.AbsMax):
      raise ValueError("QuantSpec(symmetric=False, calibration=AbsMax()): AbsMax is a symmetric range; "
                       "use calibration=MinMax() or symmetric=True.")
    if isinstance(self.calibration, cm.KL) and not (self.qtype.is_int and self.symmetric):
      raise ValueError(f"QuantSpec: KL calibration supports symmetric integer qtypes only, got "
                       f"{self.qtype.name} symmetric={self.symmetric}; use Percentile or MSE instead.")
    if self.stochastic_rounding and not self.qtype.is_int:
      raise ValueError(f"QuantSpec: stochastic_rounding needs an integer qtype, got {self.qtype.name}.")
    if int(self.double_quant_block) < 1:
      raise ValueError(f"QuantSpec(double_quant_block={self.double_quant_block}) must be a positive int, e.g. 256.")
    if self.scale_dtype not in _SCALE_DTYPES and not self.qtype.is_mx:
      raise ValueError(f"QuantSpec(scale_dtype={self.scale_dtype!r}) must be one of {_SCALE_DTYPES}.")

  @property
  def scale_jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.scale_dtype)

  def replace(self, **changes) -> "QuantSpec":
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)
