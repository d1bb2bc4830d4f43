"""Post-training quantization over whole models: sequential, layer-by-layer calibration."""

from jquant.ptq.protocol import BlockwiseModel
