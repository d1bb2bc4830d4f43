"""SmolLM2-135M-Instruct, a preset of the Llama architecture: loaded from the shipped Q4_1 GGUF (dequantized = the
reference model) into a ``jquant.models.llama.LlamaModel`` (``SmolLM2`` is that class under its old name).

    model, params = load_smollm2()
    logits = model.apply(params, model.encode_batch(["The capital of France is"]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models import llama
from jquant.models.blockwise import PyTree
from jquant.models.layers import MatmulFn
from jquant.models.llama import LlamaModel

__all__ = ["SmolLM2", "load_smollm2", "smollm2_params_from_gguf", "smollm2_tokenizer_from_gguf"]

_GGUF_BLOCK_NAMES = {
    "attn_norm": ("input_layernorm", "scale"),
    "ffn_norm": ("post_attention_layernorm", "scale"),
    "attn_q": ("self_attn/q_proj", "kernel"),
    "attn_k": ("self_attn/k_proj", "kernel"),
    "attn_v": ("self_attn/v_proj", "kernel"),
    "attn_output": ("self_attn/o_proj", "kernel"),
    "ffn_gate": ("mlp/gate_proj", "kernel"),
    "ffn_up": ("mlp/up_proj", "kernel"),
    "ffn_down": ("mlp/down_proj", "kernel"),
}


# SmolLM2 is a preset of the Llama architecture: the class is LlamaModel (kept under this name; LlamaConfig()'s
# defaults are SmolLM2-135M), and this module is its checkpoint loader.
SmolLM2 = LlamaModel


def _open_gguf(path: Path):
  import gguf  # pylint: disable=import-outside-toplevel  (optional dependency: pip install gguf)

  path = Path(path)
  if not path.is_file():
    raise ValueError(f"GGUF file {path} does not exist; fetch SmolLM2 with `python -m jquant fetch-assets`.")
  return gguf, gguf.GGUFReader(str(path))


def _field(reader, key: str) -> Any:
  f = reader.fields.get(key)
  if f is None:
    raise ValueError(f"GGUF file lacks metadata {key!r}; is it a Llama-architecture model?")
  return f.contents()


def smollm2_config_from_gguf(reader) -> llama.LlamaConfig:
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"expected a GGUF with general.architecture 'llama', got {arch!r}.")
  tok = reader.fields["tokenizer.ggml.tokens"]
  return llama.LlamaConfig(
      vocab_size=len(tok.data), hidden=int(_field(reader, "llama.embedding_length")),
      intermediate=int(_field(reader, "llama.feed_forward_length")), num_layers=int(_field(reader, "llama.block_count")),
      num_heads=int(_field(reader, "llama.attention.head_count")),
      num_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
      rope_base=_f32(_field(reader, "llama.rope.freq_base")),
      rms_eps=_f32(_field(reader, "llama.attention.layer_norm_rms_epsilon")))


def _f32(v) -> float:
  """A float32 metadata value as the shortest decimal that rounds to it (9.9999997e-06 -> 1e-05)."""
  return float(str(np.float32(v)))


def smollm2_params_from_gguf(path: str | Path) -> tuple[llama.LlamaConfig, PyTree]:
  """Reads and dequantizes every tensor of a Llama GGUF into a Linen params dict (kernels (in, out), float32)."""
  gguf, reader = _open_gguf(path)
  return _params_from_reader(gguf, reader, path)


def _params_from_reader(gguf, reader, path) -> tuple[llama.LlamaConfig, PyTree]:
  config = smollm2_config_from_gguf(reader)
  params: dict[str, Any] = {}
  for t in reader.tensors:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)  # (out, in): GGUF dims reversed
    parts = t.name.split(".")
    if t.name == "token_embd.weight":
      params["embed_tokens"] = {"embedding": w}
    elif t.name == "output_norm.weight":
      params["norm"] = {"scale": w}
    elif len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_BLOCK_NAMES and parts[3] == "weight":
      sub, leaf = _GGUF_BLOCK_NAMES[parts[2]]
      node = params.setdefault(f"layers_{int(parts[1])}", {})
      for p in sub.split("/"):
        node = node.setdefault(p, {})
      node[leaf] = w.T.copy() if leaf == "kernel" else w
    else:
      raise ValueError(f"unexpected GGUF tensor {t.name!r} (shape {tuple(w.shape)}); this loader knows tied-embedding "
                       f"Llama models (token_embd, blk.N.{{{', '.join(_GGUF_BLOCK_NAMES)}}}, output_norm).")
  missing = [f"layers_{i}" for i in range(config.num_layers) if f"layers_{i}" not in params]
  if missing or "embed_tokens" not in params or "norm" not in params:
    raise ValueError(f"GGUF file {path} is incomplete: missing {missing or ['embed_tokens/norm']}.")
  return config, jax.tree.map(jnp.asarray, params)


def smollm2_tokenizer_from_gguf(path: str | Path):
  """A ``tokenizers.Tokenizer`` from the GGUF's byte-level BPE vocabulary and merges.

  Pre-tokenizer: Digits(individual_digits=True) then ByteLevel(add_prefix_space=False); no BOS is added.
  """
  _, reader = _open_gguf(path)
  return _tokenizer_from_reader(reader)


def _tokenizer_from_reader(reader):
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel

  tokens = _field(reader, "tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  types = _field(reader, "tokenizer.ggml.token_type")
  vocab = {tok: i for i, tok in enumerate(tokens)}
  tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tk.decoder = decoders.ByteLevel()
  control = [AddedToken(tokens[i], special=True, normalized=False) for i, ty in enumerate(types) if int(ty) == 3]
  tk.add_special_tokens(control)
  return tk


def load_smollm2(path: str | Path | None = None, matmul: MatmulFn | None = None) -> tuple[SmolLM2, PyTree]:
  """Loads SmolLM2-135M-Instruct (fetching the asset on first use when ``path`` is None).

  Returns:
    (model, params): params are the dequantized GGUF weights, float32.
  """
  if path is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    path = assets.smollm2_gguf()
  gguf, reader = _open_gguf(path)
  config, params = _params_from_reader(gguf, reader, path)
  return SmolLM2(config, matmul=matmul, tokenizer=_tokenizer_from_reader(reader)), params
