"""jquant.core: number formats, granularities, specs, QArray, quantize/dequantize, packing (jax + numpy only)."""

from jquant.core.calibration_methods import EMA, KL, MSE, AbsMax, MinMax, Percentile
from jquant.core.double_quant import DoubleQuantScale, double_quantize
from jquant.core.granularity import PerBlock, PerChannel, PerGroup, PerTensor, PerToken, scale_shape
from jquant.core.metrics import quant_error, sqnr
from jquant.core.qarray import QArray, validate_qarray
from jquant.core.mx import NVFP4Scale
from jquant.core.qtypes import (FP8_E4M3, FP8_E5M2, INT2, INT3, INT4, INT8, MXFP4, MXFP8_E4M3, MXFP8_E5M2, NF4,
                                NF4_LEVELS, NVFP4, UINT2, UINT3, UINT4, UINT8, QType, qtype_by_name)
from jquant.core.quantize import compute_qparams, dequantize, quantize
from jquant.core.spec import QuantSpec
