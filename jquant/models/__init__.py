"""Real model definitions (Flax Linen) used by evaluation, the demo and the PTQ pipeline.

* ``load_minilm()`` -> (``MiniLM``, params): all-MiniLM-L6-v2 sentence encoder (BERT, post-LN).
* ``load_smollm2()`` -> (``SmolLM2``, params): SmolLM2-135M-Instruct causal LM (Llama, GQA, adjacent-pair RoPE).
* ``from_pretrained(path)`` -> (model, params): a local Hugging Face folder (Llama/Qwen2 -> ``SmolLM2``, BERT ->
  ``MiniLM``), float or GPTQ / AWQ / compressed-tensors quantized; ``export_pretrained`` writes one.

Both wrappers implement ``jquant.ptq.protocol.BlockwiseModel``; every linear layer is ``layers.Linear``, whose
kernel may be a float array or a ``jquant.QArray``.
"""

from jquant.models.bert import BertConfig as BertConfig
from jquant.models.hf import export_pretrained as export_pretrained
from jquant.models.hf import from_pretrained as from_pretrained
from jquant.models.layers import Linear as Linear
from jquant.models.llama import LlamaConfig as LlamaConfig
from jquant.models.minilm import MiniLM as MiniLM
from jquant.models.minilm import load_minilm as load_minilm
from jquant.models.smollm2 import SmolLM2 as SmolLM2
from jquant.models.smollm2 import load_smollm2 as load_smollm2

__all__ = ["BertConfig", "Linear", "LlamaConfig", "MiniLM", "SmolLM2", "export_pretrained", "from_pretrained",
           "load_minilm", "load_smollm2"]
