"""W8A8 matmul: int8 x int8 -> int32 with per-token / per-channel scale epilogue, plus fused dynamic quantization."""

from pallas_kernels.int8_matmul.ops import Config as Config
from pallas_kernels.int8_matmul.ops import autotune_configs as autotune_configs
from pallas_kernels.int8_matmul.ops import default_config as default_config
from pallas_kernels.int8_matmul.ops import int8_matmul as int8_matmul
from pallas_kernels.int8_matmul.ops import int8_matmul_dynamic as int8_matmul_dynamic
from pallas_kernels.int8_matmul.ops import supports as supports
from pallas_kernels.int8_matmul.reference import quantize_per_token as quantize_per_token
from pallas_kernels.int8_matmul.reference import reference as reference
from pallas_kernels.int8_matmul.reference import reference_dynamic as reference_dynamic

__all__ = ("Config", "autotune_configs", "default_config", "int8_matmul", "int8_matmul_dynamic",
           "quantize_per_token", "reference", "reference_dynamic", "supports")
