"""W4A16 matmul: bf16/fp16 activations times packed int4 weights with group-wise scales."""

from pallas_kernels.int4_matmul.ops import Config as Config
from pallas_kernels.int4_matmul.ops import autotune_configs as autotune_configs
from pallas_kernels.int4_matmul.ops import default_config as default_config
from pallas_kernels.int4_matmul.ops import int4_matmul as int4_matmul
from pallas_kernels.int4_matmul.ops import supports as supports
from pallas_kernels.int4_matmul.reference import reference as reference
from pallas_kernels.int4_matmul.reference import unpack_int4 as unpack_int4

__all__ = ("Config", "autotune_configs", "default_config", "int4_matmul", "reference", "supports", "unpack_int4")
