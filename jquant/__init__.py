"""jquant: quantize JAX/Flax models -- numerics, PTQ solvers, QAT, mixed precision, Pallas GPU kernels.

The public API is what ``__all__`` lists (a golden test keeps it deliberate); subpackages:
``jq.calibration``, ``jq.solvers``, ``jq.ptq``, ``jq.qat``, ``jq.flax``, ``jq.mixed_precision``, ``jq.ops``, ``jq.io``;
real models and evaluation live in ``jquant.models`` / ``jquant.eval`` (imported on demand).
"""

from jquant import calibration, io, mixed_precision, ops, ptq, qat, solvers
from jquant import flax  # the only subpackage importing flax (besides models/ptq glue)
from jquant.core import (EMA, FP8_E4M3, FP8_E5M2, INT2, INT3, INT4, INT8, KL, MSE, MXFP4, MXFP8_E4M3, MXFP8_E5M2, NF4,
                         NVFP4, UINT2, UINT3, UINT4, UINT8,
                         AbsMax, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, QArray,
                         QType, QuantSpec, compute_qparams, dequantize, quant_error, quantize, sqnr)
from jquant.ops import qdot, qeinsum
from jquant.params import dequantize_params, last_report, quantize_params
from jquant.qat import fake_quant
from jquant.report import QuantReport
from jquant.rules import QuantConfig, QuantRule

__version__ = "0.1.0"

__all__ = (
    # number formats
    "INT8", "UINT8", "INT4", "UINT4", "INT3", "UINT3", "INT2", "UINT2", "FP8_E4M3", "FP8_E5M2", "NF4", "QType",
    "MXFP8_E4M3", "MXFP8_E5M2", "MXFP4", "NVFP4",
    # granularities and calibration methods
    "PerTensor", "PerChannel", "PerGroup", "PerToken", "PerBlock",
    "AbsMax", "MinMax", "Percentile", "MSE", "KL", "EMA",
    # numerics
    "QuantSpec", "QArray", "quantize", "dequantize", "compute_qparams", "fake_quant", "sqnr", "quant_error",
    # params
    "QuantConfig", "QuantRule", "QuantReport", "quantize_params", "dequantize_params", "last_report",
    # inference ops
    "qdot", "qeinsum",
    # subpackages
    "calibration", "solvers", "ptq", "qat", "flax", "mixed_precision", "ops", "io",
)
