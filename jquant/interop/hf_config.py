"""Hugging Face ``config.json`` <-> jquant model settings, and HF tensor names <-> jquant param paths.

Architectures: ``LlamaForCausalLM`` (Llama, SmolLM, Mistral-style), ``Qwen2ForCausalLM`` (q/k/v biases) and
``BertModel`` (MiniLM-style encoders). Settings come back as plain dicts (the kwargs of ``LlamaConfig`` /
``BertConfig``) so that this package needs neither flax nor ``jquant.models``.

RoPE layout: HF Llama rotates halves (x[i], x[i + D/2]); jquant's Llama rotates adjacent pairs (x[2i], x[2i+1]),
the GGUF layout. On import the q/k output rows of every head are permuted ``ours[2i + j] = hf[j * D/2 + i]``
(`qk_perm`), on export back; the attention scores are unchanged, so logits match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARCHITECTURES", "read_config", "model_settings", "llama_hf_config", "bert_hf_config", "qk_perm",
           "llama_names", "bert_names"]

LLAMA_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
BERT_ARCHS = ("BertModel",)
ARCHITECTURES = LLAMA_ARCHS + BERT_ARCHS


def read_config(path: str | Path) -> dict[str, Any]:
  path = Path(path)
  if not path.is_dir():
    raise ValueError(f"{path} is not a directory; give a Hugging Face model folder (config.json, model.safetensors, "
                     f"tokenizer.json).")
  cfg = path / "config.json"
  if not cfg.is_file():
    raise ValueError(f"{path} has no config.json, so it is not a Hugging Face model folder (a jquant checkpoint "
                     f"folder has meta.json instead; `python -m jquant export` turns one into an HF folder).")
  try:
    return json.loads(cfg.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg}: not valid JSON ({e}).") from e


def _req(c: dict, key: str, where: str):
  if key not in c:
    raise ValueError(f"{where}: config.json lacks {key!r}.")
  return c[key]


def model_settings(c: dict, where: str = "config.json") -> tuple[str, dict[str, Any]]:
  """("llama" | "bert", kwargs of LlamaConfig / BertConfig) from an HF config dict; ValueError if unsupported."""
  archs = c.get("architectures") or []
  arch = next((a for a in archs if a in ARCHITECTURES), None)
  if arch is None:
    raise ValueError(f"{where}: architectures {archs} is not supported; jquant reads {list(ARCHITECTURES)}.")
  if arch in LLAMA_ARCHS:
    heads = int(_req(c, "num_attention_heads", where))
    hidden = int(_req(c, "hidden_size", where))
    if c.get("head_dim") not in (None, hidden // heads):
      raise ValueError(f"{where}: head_dim {c['head_dim']} != hidden_size / num_attention_heads; not supported.")
    rope = dict(c.get("rope_parameters") or {})         # transformers >= 5 keeps rope_theta here
    scaling = c.get("rope_scaling") or {}
    for r in (rope, scaling):
      if r.get("rope_type", r.get("type", "default")) != "default":
        raise ValueError(f"{where}: RoPE type {r.get('rope_type', r.get('type'))!r} is not supported (plain RoPE "
                         f"only: rope_type 'default').")
    rope_theta = c.get("rope_theta", rope.get("rope_theta", 10000.0))
    if c.get("hidden_act", "silu") != "silu" or c.get("mlp_bias"):
      raise ValueError(f"{where}: hidden_act {c.get('hidden_act')!r} / mlp_bias {c.get('mlp_bias')} not supported.")
    qwen = arch == "Qwen2ForCausalLM"
    kw = dict(vocab_size=int(_req(c, "vocab_size", where)), hidden=hidden,
              intermediate=int(_req(c, "intermediate_size", where)),
              num_layers=int(_req(c, "num_hidden_layers", where)), num_heads=heads,
              num_kv_heads=int(c.get("num_key_value_heads") or heads),
              rope_base=float(rope_theta), rms_eps=float(c.get("rms_norm_eps", 1e-6)),
              tie_embeddings=bool(c.get("tie_word_embeddings", False)),   # transformers' Llama/Qwen2 default
              qkv_bias=bool(qwen or c.get("attention_bias", False)), o_bias=bool(not qwen and c.get("attention_bias")))
    return "llama", kw
  if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{where}: BERT with hidden_act {c.get('hidden_act')!r} / position_embedding_type "
                     f"{c.get('position_embedding_type')!r} is not supported (gelu, absolute).")
  return "bert", dict(vocab_size=int(_req(c, "vocab_size", where)), hidden=int(_req(c, "hidden_size", where)),
                      intermediate=int(_req(c, "intermediate_size", where)),
                      num_layers=int(_req(c, "num_hidden_layers", where)),
                      num_heads=int(_req(c, "num_attention_heads", where)),
                      max_positions=int(c.get("max_position_embeddings", 512)),
                      type_vocab_size=int(c.get("type_vocab_size", 2)), ln_eps=float(c.get("layer_norm_eps", 1e-12)))


def llama_hf_config(kw: dict[str, Any], dtype: str = "float32", bos: int | None = None,
                    eos: int | None = None) -> dict[str, Any]:
  """config.json of a ``LlamaForCausalLM`` (or Qwen2 when only q/k/v have biases) from LlamaConfig kwargs."""
  qwen = kw.get("qkv_bias") and not kw.get("o_bias")
  c = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"], "model_type": "qwen2" if qwen else "llama",
       "vocab_size": kw["vocab_size"], "hidden_size": kw["hidden"], "intermediate_size": kw["intermediate"],
       "num_hidden_layers": kw["num_layers"], "num_attention_heads": kw["num_heads"],
       "num_key_value_heads": kw["num_kv_heads"], "head_dim": kw["hidden"] // kw["num_heads"],
       "rope_theta": kw["rope_base"], "rms_norm_eps": kw["rms_eps"],
       "tie_word_embeddings": bool(kw.get("tie_embeddings", True)), "hidden_act": "silu",
       "max_position_embeddings": 8192, "initializer_range": 0.02, "use_cache": True, "rope_scaling": None,
       "torch_dtype": dtype}
  if not qwen:
    c.update(attention_bias=bool(kw.get("o_bias")), attention_dropout=0.0, mlp_bias=False, pretraining_tp=1)
  if bos is not None:
    c["bos_token_id"] = bos
  if eos is not None:
    c["eos_token_id"] = eos
  return c


def bert_hf_config(kw: dict[str, Any], dtype: str = "float32") -> dict[str, Any]:
  return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": kw["vocab_size"],
          "hidden_size": kw["hidden"], "intermediate_size": kw["intermediate"],
          "num_hidden_layers": kw["num_layers"], "num_attention_heads": kw["num_heads"],
          "max_position_embeddings": kw["max_positions"], "type_vocab_size": kw["type_vocab_size"],
          "layer_norm_eps": kw["ln_eps"], "hidden_act": "gelu", "position_embedding_type": "absolute",
          "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
          "pad_token_id": 0, "torch_dtype": dtype}


def qk_perm(num_heads: int, head_dim: int) -> np.ndarray:
  """Index array p with ``ours[:, c] = hf[:, p[c]]`` for q/k kernels (in, heads * head_dim)."""
  return np.arange(num_heads * head_dim).reshape(num_heads, 2, head_dim // 2).transpose(0, 2, 1).reshape(-1)


_LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj")
_BERT_LINEARS = {"attention.self.query": "attention/query", "attention.self.key": "attention/key",
                 "attention.self.value": "attention/value", "attention.output.dense": "attention/output",
                 "intermediate.dense": "intermediate", "output.dense": "output"}
_BERT_NORMS = {"attention.output.LayerNorm": "attention_layernorm", "output.LayerNorm": "output_layernorm"}


def llama_names(kw: dict[str, Any]) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
  """(linear modules {HF module name: (jquant module path, role)}, other tensors {HF name: jquant path}).

  role is "q"/"k" (RoPE-permuted), "plain" otherwise. Kernels are (in, out) = HF weight transposed.
  """
  lin: dict[str, tuple[str, str]] = {}
  other = {"model.embed_tokens.weight": "embed_tokens/embedding", "model.norm.weight": "norm/scale"}
  for i in range(kw["num_layers"]):
    for m in _LLAMA_LINEARS:
      role = {"self_attn.q_proj": "q", "self_attn.k_proj": "k"}.get(m, "plain")
      lin[f"model.layers.{i}.{m}"] = (f"layers_{i}/{m.replace('.', '/')}", role)
    other[f"model.layers.{i}.input_layernorm.weight"] = f"layers_{i}/input_layernorm/scale"
    other[f"model.layers.{i}.post_attention_layernorm.weight"] = f"layers_{i}/post_attention_layernorm/scale"
  if not kw.get("tie_embeddings", True):
    lin["lm_head"] = ("lm_head", "plain")
  return lin, other


def bert_names(kw: dict[str, Any]) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
  lin: dict[str, tuple[str, str]] = {}
  other = {"embeddings.LayerNorm.weight": "embeddings/LayerNorm/scale",
           "embeddings.LayerNorm.bias": "embeddings/LayerNorm/bias"}
  for e in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    other[f"embeddings.{e}.weight"] = f"embeddings/{e}/embedding"
  for i in range(kw["num_layers"]):
    for hf, ours in _BERT_LINEARS.items():
      lin[f"encoder.layer.{i}.{hf}"] = (f"layer_{i}/{ours}", "plain")
    for hf, ours in _BERT_NORMS.items():
      other[f"encoder.layer.{i}.{hf}.weight"] = f"layer_{i}/{ours}/scale"
      other[f"encoder.layer.{i}.{hf}.bias"] = f"layer_{i}/{ours}/bias"
  return lin, other
