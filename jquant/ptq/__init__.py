"""Post-training quantization over whole models: sequential, layer-by-layer calibration.

    qparams, report = jq.ptq.quantize_model(model, params, calib_batches, jq.ptq.GPTQ(spec, act_order=True))
"""

from jquant.ptq.methods import AWQ, GPTQ, RTN, LLMInt8, SmoothQuant
from jquant.ptq.pipeline import quantize_model, runtime_model
from jquant.ptq.protocol import BlockwiseModel
from jquant.ptq.report import LayerReport, PTQReport

__all__ = ["AWQ", "BlockwiseModel", "GPTQ", "LLMInt8", "LayerReport", "PTQReport", "RTN", "SmoothQuant",
           "quantize_model", "runtime_model"]
