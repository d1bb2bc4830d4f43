"""The public API is deliberate: changing it means changing this list (STYLE P8) and DESIGN.md."""

import jquant

GOLDEN = {
    "INT8", "UINT8", "INT4", "UINT4", "INT3", "UINT3", "INT2", "UINT2", "FP8_E4M3", "FP8_E5M2", "NF4", "QType",
    "MXFP8_E4M3", "MXFP8_E5M2", "MXFP4", "NVFP4",
    "PerTensor", "PerChannel", "PerGroup", "PerToken", "PerBlock",
    "AbsMax", "MinMax", "Percentile", "MSE", "KL", "EMA",
    "QuantSpec", "QArray", "quantize", "dequantize", "compute_qparams", "fake_quant", "sqnr", "quant_error",
    "QuantConfig", "QuantRule", "QuantReport", "quantize_params", "dequantize_params", "last_report",
    "qdot", "qeinsum",
    "calibration", "solvers", "ptq", "qat", "flax", "mixed_precision", "ops", "io",
}


def test_public_api_is_frozen():
  assert set(jquant.__all__) == GOLDEN
  for name in GOLDEN:
    assert hasattr(jquant, name), name


def test_design_contract_names_exist():
  import jquant as jq
  for path in ["solvers.gptq", "solvers.awq_scales", "solvers.smoothquant_scales", "solvers.llm_int8", "solvers.rtn",
               "ptq.quantize_model", "qat.convert", "flax.linen", "flax.nnx", "mixed_precision.Policy",
               "mixed_precision.loss_scaled", "mixed_precision.DynamicLossScale",
               "mixed_precision.current_loss_scale", "io.save_safetensors", "io.load_orbax"]:
    obj = jq
    for part in path.split("."):
      obj = getattr(obj, part)
