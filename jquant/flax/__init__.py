"""Flax integration (the only jquant package that imports flax): QAT wrappers for Linen and NNX, QLoRA.

Submodules: `jquant.flax.linen`, `jquant.flax.nnx`, `jquant.flax.qlora`.
"""

from jquant.flax import linen as linen
from jquant.flax import nnx as nnx
from jquant.flax import qlora as qlora
from jquant.flax._quant import fake_quant_conv as fake_quant_conv
from jquant.flax._quant import fake_quant_dot_general as fake_quant_dot_general
from jquant.flax._quant import fake_quant_einsum as fake_quant_einsum

__all__ = ("fake_quant_conv", "fake_quant_dot_general", "fake_quant_einsum", "linen", "nnx", "qlora")
