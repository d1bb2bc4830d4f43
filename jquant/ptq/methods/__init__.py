"""PTQ methods for `jquant.ptq.quantize_model`, one file each, all implementing `PTQMethod` (see ``base.py``).

Weight-only methods (`RTN`, `GPTQ`, `AWQ`) store `QArray` kernels that run through ``jquant.ops.qdot``.
Activation-quantizing methods (`SmoothQuant`, `LLMInt8`) also carry the run-time ``matmul`` that
`jquant.ptq.runtime_model` applies.
"""

from jquant.ptq.methods.act_quant import ActQuant, ActQuantMatmul
from jquant.ptq.methods.autoround import AutoRound
from jquant.ptq.methods.awq import AWQ
from jquant.ptq.methods.base import PTQMethod, Scaling, check_method
from jquant.ptq.methods.gptq import GPTQ
from jquant.ptq.methods.hqq import HQQ
from jquant.ptq.methods.llm_int8 import LLMInt8, LLMInt8Matmul
from jquant.ptq.methods.rtn import RTN
from jquant.ptq.methods.smoothquant import SmoothQuant, W8A8Matmul

METHODS = (RTN, GPTQ, AWQ, SmoothQuant, LLMInt8, HQQ, AutoRound)

__all__ = ["AWQ", "ActQuant", "ActQuantMatmul", "AutoRound", "GPTQ", "HQQ", "LLMInt8", "LLMInt8Matmul", "METHODS",
           "PTQMethod", "RTN", "Scaling", "SmoothQuant",
           "W8A8Matmul", "check_method"]
