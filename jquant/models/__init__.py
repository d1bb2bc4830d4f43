"""Real model definitions (Flax Linen) used by evaluation, the demo, the PTQ pipeline and generation.

Architectures, one implementation each (every linear layer is ``layers.Linear``, whose kernel may be a float array
or a ``jquant.QArray``; one ``layers.attention``):

* ``llama.LlamaModel`` (config ``LlamaConfig``): pre-RMSNorm causal LM, GQA, adjacent-pair RoPE, SwiGLU. Its Linen
  ``LlamaLM`` runs with or without a KV cache, so evaluation, PTQ capture and ``jquant.inference`` share its blocks.
* ``bert.BertModel`` (config ``BertConfig``): post-LN sentence encoder with mean pooling.

Presets (checkpoint loaders; the old class names are aliases of the architectures):

* ``load_smollm2()`` -> (``SmolLM2`` = ``LlamaModel``, params): SmolLM2-135M-Instruct from its GGUF.
* ``load_minilm()`` -> (``MiniLM`` = ``BertModel``, params): all-MiniLM-L6-v2 from its safetensors.
* ``from_pretrained(path)`` -> (model, params): a local Hugging Face folder (Llama/Qwen2 -> ``LlamaModel``, BERT ->
  ``BertModel``), float or GPTQ / AWQ / compressed-tensors quantized; ``export_pretrained`` writes one.

Both architectures implement ``jquant.ptq.protocol.BlockwiseModel`` (shared plumbing in ``blockwise.BlockwiseBase``).
"""

from jquant.models.bert import BertConfig as BertConfig
from jquant.models.bert import BertModel as BertModel
from jquant.models.hf import export_pretrained as export_pretrained
from jquant.models.hf import from_pretrained as from_pretrained
from jquant.models.layers import Linear as Linear
from jquant.models.llama import LlamaConfig as LlamaConfig
from jquant.models.llama import LlamaModel as LlamaModel
from jquant.models.minilm import MiniLM as MiniLM
from jquant.models.minilm import load_minilm as load_minilm
from jquant.models.smollm2 import SmolLM2 as SmolLM2
from jquant.models.smollm2 import load_smollm2 as load_smollm2

__all__ = ["BertConfig", "BertModel", "Linear", "LlamaConfig", "LlamaModel", "MiniLM", "SmolLM2", "export_pretrained",
           "from_pretrained", "load_minilm", "load_smollm2"]
