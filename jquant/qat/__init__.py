"""Quantization-aware training: fake quantization (clipped STE), LSQ/LSQ+ learned step sizes, conversion."""

from jquant.qat.convert import convert as convert
from jquant.qat.convert import path_str as path_str
from jquant.qat.fake_quant import fake_quant as fake_quant
from jquant.qat.fake_quant import fake_quant_with_range as fake_quant_with_range
from jquant.qat.fake_quant import numel_per_scale as numel_per_scale
from jquant.qat.fake_quant import representable_range as representable_range
from jquant.qat.lsq import lsq_fake_quant as lsq_fake_quant
from jquant.qat.lsq import lsq_grad_scale as lsq_grad_scale
from jquant.qat.lsq import lsq_init as lsq_init
from jquant.qat.lsq import lsq_quantize as lsq_quantize
from jquant.qat.lsq import lsq_step as lsq_step

__all__ = (
    "convert",
    "fake_quant",
    "fake_quant_with_range",
    "lsq_fake_quant",
    "lsq_grad_scale",
    "lsq_init",
    "lsq_quantize",
    "lsq_step",
    "numel_per_scale",
    "path_str",
    "representable_range",
)
