"""jquant: quantize JAX/Flax models -- numerics, PTQ solvers, QAT, mixed precision, Pallas GPU kernels."""

from jquant.core import (EMA, FP8_E4M3, FP8_E5M2, INT2, INT3, INT4, INT8, KL, MSE, NF4, UINT2, UINT3, UINT4, UINT8,
                         AbsMax, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, QArray,
                         QType, QuantSpec, dequantize, quant_error, quantize, sqnr)

__version__ = "0.1.0"

from jquant import io
from jquant.params import dequantize_params, last_report, quantize_params
from jquant.report import QuantReport
from jquant.rules import QuantConfig, QuantRule
