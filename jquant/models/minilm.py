"""all-MiniLM-L6-v2, a preset of the BERT architecture: loaded from the shipped fp32 safetensors into a
``jquant.models.bert.BertModel`` (``MiniLM`` is that class under its old name).

    model, params = load_minilm()
    emb = model.apply(params, model.encode_batch(["A sentence.", "Another one."]))   # (2, 384), unit norm
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models import bert
from jquant.models.bert import BertModel
from jquant.models.blockwise import PyTree
from jquant.models.layers import MatmulFn

__all__ = ["MiniLM", "load_minilm", "minilm_params_from_safetensors"]

_LAYER_NAMES = {
    "attention.self.query": "attention/query",
    "attention.self.key": "attention/key",
    "attention.self.value": "attention/value",
    "attention.output.dense": "attention/output",
    "attention.output.LayerNorm": "attention_layernorm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_layernorm",
}
_LEAF = {"weight": "kernel", "bias": "bias"}
_LN_LEAF = {"weight": "scale", "bias": "bias"}


# MiniLM is a preset of the BERT architecture: the class is BertModel (kept under this name; BertConfig()'s
# defaults are all-MiniLM-L6-v2), and this module is its checkpoint loader.
MiniLM = BertModel

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def minilm_params_from_safetensors(path: str | Path) -> PyTree:
  """Reads a BERT ``model.safetensors`` into a Linen params dict (torch (out, in) weights -> (in, out) kernels).

  ``embeddings.position_ids`` and the unused ``pooler.*`` tensors are skipped.
  """
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  path = Path(path)
  if not path.is_file():
    raise ValueError(f"safetensors file {path} does not exist; fetch MiniLM with `python -m jquant fetch-assets`.")
  params: dict[str, Any] = {}
  for key, w in load_file(str(path)).items():
    parts = key.split(".")
    if key == "embeddings.position_ids" or parts[0] == "pooler":
      continue
    if parts[0] == "embeddings" and len(parts) == 3:
      node = params.setdefault("embeddings", {}).setdefault(parts[1], {})
      node[_LN_LEAF[parts[2]] if parts[1] == "LayerNorm" else "embedding"] = w.astype(np.float32)
      continue
    if parts[:2] == ["encoder", "layer"] and ".".join(parts[3:-1]) in _LAYER_NAMES:
      sub = _LAYER_NAMES[".".join(parts[3:-1])]
      node = params.setdefault(f"layer_{int(parts[2])}", {})
      for p in sub.split("/"):
        node = node.setdefault(p, {})
      if sub.endswith("layernorm"):
        node[_LN_LEAF[parts[-1]]] = w.astype(np.float32)
      else:
        node[_LEAF[parts[-1]]] = (w.T if parts[-1] == "weight" else w).astype(np.float32).copy()
      continue
    raise ValueError(f"unexpected tensor {key!r} {w.shape} in {path}; this loader knows BERT encoders.")
  return jax.tree.map(jnp.asarray, params)


def _config_from_json(path: Path) -> bert.BertConfig:
  import json  # pylint: disable=import-outside-toplevel

  c = json.loads(path.read_text())
  return bert.BertConfig(vocab_size=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
                         num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                         max_positions=c["max_position_embeddings"], type_vocab_size=c["type_vocab_size"],
                         ln_eps=float(c["layer_norm_eps"]))


def load_minilm(path: str | Path | None = None, matmul: MatmulFn | None = None) -> tuple[MiniLM, PyTree]:
  """Loads all-MiniLM-L6-v2 from a folder with model.safetensors, config.json, tokenizer.json.

  ``path=None`` fetches the asset on first use.
  """
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

  if path is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    path = assets.minilm_dir()
  path = Path(path)
  missing = [f for f in ("model.safetensors", "config.json", "tokenizer.json") if not (path / f).is_file()]
  if missing:
    raise ValueError(f"MiniLM folder {path} lacks {missing}; pass the folder that holds model.safetensors, or "
                     f"fetch the asset with `python -m jquant fetch-assets`.")
  tk = Tokenizer.from_file(str(path / "tokenizer.json"))
  tk.no_padding()
  tk.enable_truncation(max_length=MAX_TOKENS)
  config = _config_from_json(path / "config.json")
  return MiniLM(config, matmul=matmul, tokenizer=tk), minilm_params_from_safetensors(path / "model.safetensors")
