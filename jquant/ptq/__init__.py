"""Post-training quantization of whole Flax models: sequential, block-by-block calibration.

    qparams, report = jq.ptq.quantize_model(model, params, calib_batches, jq.ptq.GPTQ(spec, act_order=True))
    run = jq.ptq.runtime_model(model, method)        # .apply(variables, *args) with QArray kernels via jq.qdot

``model``: any Flax Linen module (linears, blocks and groups found by interception, `linen_model`) or a
`BlockwiseModel`. Methods (`methods/`, one file each) implement the `PTQMethod` protocol; `pipeline` drives them;
`capture` reduces layer inputs to streaming statistics; `access` reads and writes linears as (K, N) matrices;
`scaling` places AWQ / SmoothQuant scales; `runtime` runs a user's model with quantized params; `layer_errors`
measures a running quantized model per layer. What was done to every linear is a `PTQReport` (`jquant.report`).
"""

from jquant.ptq.methods import AWQ, ActQuant, AutoRound, GPTQ, HQQ, RTN, LLMInt8, SmoothQuant
from jquant.ptq.pipeline import quantize_model, runtime_model
from jquant.ptq.protocol import BlockwiseModel
from jquant.report import LayerReport, PTQReport

__all__ = ["AWQ", "ActQuant", "AutoRound", "BlockwiseModel", "GPTQ", "HQQ", "LLMInt8", "LayerReport", "PTQReport",
           "RTN", "SmoothQuant",
           "quantize_model", "runtime_model"]
