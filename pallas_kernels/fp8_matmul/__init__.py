"""FP8 x FP8 matmul (e4m3 / e5m2) with per-tensor or per-row / per-channel scales and float32 accumulation."""

from pallas_kernels.fp8_matmul.ops import Config as Config
from pallas_kernels.fp8_matmul.ops import autotune_configs as autotune_configs
from pallas_kernels.fp8_matmul.ops import default_config as default_config
from pallas_kernels.fp8_matmul.ops import fp8_matmul as fp8_matmul
from pallas_kernels.fp8_matmul.ops import supports as supports
from pallas_kernels.fp8_matmul.reference import reference as reference

__all__ = ("Config", "autotune_configs", "default_config", "fp8_matmul", "reference", "supports")
