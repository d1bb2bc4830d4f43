"""jquant.solvers: pure, jittable post-training quantization solvers (arrays in, QArrays / arrays out).

Kernels are Flax (K, N) = (in, out). See each module for the reference details it follows and where it differs.
"""

from jquant.core.deprecation import deprecated_alias
from jquant.solvers.awq import (AWQClip, AWQScales, act_mean_abs, apply_clip, awq_clip, awq_scales,
                                quantize_dequantize)
from jquant.solvers.folding import fold_scales_into_norm, fold_scales_into_prev_linear, scale_weight_rows
from jquant.solvers.gptq import GPTQInfo, gptq, gptq_solve
from jquant.solvers.grid import grid_qparams, grid_quantize, grid_spec, importance_from_gram
from jquant.solvers.hessian import HessianState, hessian_finalize, hessian_init, hessian_update
from jquant.solvers.llm_int8 import llm_int8, llm_int8_matmul, llm_int8_prepare
from jquant.solvers.rtn import rtn
from jquant.solvers.smoothquant import (smoothquant_scales, w8a8_matmul, w8a8_quantize_weight, w8a8_weight_spec,
                                        weight_absmax)
from jquant.solvers.zeroquant import zeroquant_matmul, zeroquant_quantize_weight, zeroquant_spec

#: Deprecated (one release): the old name of `quantize_dequantize`, easily confused with QAT's ``jq.fake_quant``.
fake_quant = deprecated_alias(quantize_dequantize, "jq.solvers.fake_quant", "jq.solvers.quantize_dequantize")

__all__ = [
    "AWQClip", "AWQScales", "GPTQInfo", "HessianState", "act_mean_abs", "apply_clip", "awq_clip", "awq_scales",
    "fold_scales_into_norm", "fold_scales_into_prev_linear", "gptq", "gptq_solve", "grid_qparams",
    "grid_quantize", "grid_spec", "hessian_finalize", "hessian_init", "hessian_update", "importance_from_gram",
    "llm_int8", "llm_int8_matmul", "llm_int8_prepare", "quantize_dequantize", "rtn", "scale_weight_rows",
    "smoothquant_scales", "w8a8_matmul", "w8a8_quantize_weight", "w8a8_weight_spec", "weight_absmax",
    "zeroquant_matmul", "zeroquant_quantize_weight", "zeroquant_spec",
]
