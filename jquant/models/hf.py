"""Hugging Face model folders <-> jquant models.

    model, params = jquant.models.from_pretrained("path/to/hf_dir")     # Llama/Qwen2 -> LlamaModel, BERT -> BertModel
    jquant.models.export_pretrained(model, qparams, "out_dir", fmt="compressed-tensors")

Quantized checkpoints (GPTQ, AWQ GEMM, compressed-tensors) load straight into ``QArray`` kernels that run through
``jq.qdot``; the format code lives in ``jquant.interop`` (NumPy only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jquant.interop import export as _export
from jquant.interop import import_ as _import
from jquant.models.bert import BertConfig, BertModel
from jquant.models.layers import MatmulFn
from jquant.models.llama import LlamaConfig, LlamaModel
from jquant.models.minilm import MAX_TOKENS

__all__ = ["from_pretrained", "export_pretrained", "is_hf_dir", "hf_kind"]


def is_hf_dir(path: str | Path) -> bool:
  """True for a folder with config.json (a Hugging Face model folder)."""
  p = Path(path)
  return p.is_dir() and (p / "config.json").is_file()


def hf_kind(path: str | Path) -> str:
  """"llama" or "bert" for an HF folder (from config.json; ValueError if unsupported)."""
  from jquant.interop import hf_config  # pylint: disable=import-outside-toplevel
  return hf_config.model_settings(hf_config.read_config(path), str(Path(path) / "config.json"))[0]


def from_pretrained(path: str | Path, matmul: MatmulFn | None = None) -> tuple[Any, dict]:
  """Loads a local Hugging Face folder (config.json, model.safetensors or an index, tokenizer.json).

  Returns:
    (model, params): a ``LlamaModel`` for Llama-family causal LMs, a ``BertModel`` for BERT encoders; params hold
    float32 arrays, and ``QArray`` kernels for GPTQ / AWQ / compressed-tensors checkpoints. ``model.hf_notes`` says
    how each linear layer was loaded.
  """
  hf = _import.load_hf(path)
  tk = None
  if hf.tokenizer_file is not None:
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    tk = Tokenizer.from_file(str(hf.tokenizer_file))
  if hf.kind == "llama":
    model = LlamaModel(LlamaConfig(**hf.settings), matmul=matmul, tokenizer=tk)
  else:
    if tk is not None:
      tk.no_padding()
      tk.enable_truncation(max_length=min(MAX_TOKENS, hf.settings["max_positions"]))
    model = BertModel(BertConfig(**hf.settings), matmul=matmul, tokenizer=tk)
  model.hf_notes = hf.notes
  model.hf_special_ids = (hf.config.get("bos_token_id"), hf.config.get("eos_token_id"))
  return model, hf.params


def _smollm2_special_ids() -> tuple[int | None, int | None]:
  """bos/eos ids of the shipped SmolLM2 GGUF (None when the asset or the fields are absent)."""
  try:
    from jquant import assets  # pylint: disable=import-outside-toplevel
    from jquant.models import smollm2  # pylint: disable=import-outside-toplevel
    _, reader = smollm2._open_gguf(assets.smollm2_gguf())  # pylint: disable=protected-access
    return (int(reader.fields["tokenizer.ggml.bos_token_id"].contents()),
            int(reader.fields["tokenizer.ggml.eos_token_id"].contents()))
  except (KeyError, ValueError, OSError, ImportError):
    return None, None


def export_pretrained(model: Any, params: dict, out_dir: str | Path, fmt: str = "float",
                      bos_eos_ids: tuple[int | None, int | None] | None = None) -> dict[str, str]:
  """Writes ``params`` of a ``LlamaModel`` / ``BertModel`` (``SmolLM2`` / ``MiniLM``) as a Hugging Face folder in
  ``fmt`` (float, compressed-tensors, gptq, awq); see ``jquant.interop.export``. Returns {HF module: how it was
  written}."""
  if isinstance(model, LlamaModel):
    kind = "llama"
  elif isinstance(model, BertModel):
    kind = "bert"
  else:
    raise TypeError(f"export_pretrained: expected a LlamaModel (SmolLM2) or BertModel (MiniLM), got "
                    f"{type(model).__name__}.")
  settings = dataclasses.asdict(model.config)
  if settings.pop("rotate_down", False):
    raise ValueError("export_pretrained: this model computes an online Hadamard transform before down_proj "
                     "(jquant.models.rotation, rotate_down=True), which Hugging Face configs cannot express; export a "
                     "model rotated with online=False, or the unrotated one.")
  if settings.pop("rotate_inputs", False):
    raise ValueError("export_pretrained: this encoder computes an online Hadamard transform before every linear "
                     "(jquant.models.rotation, rotate_inputs=True), which Hugging Face configs cannot express; export "
                     "the unrotated model.")
  tk = model.tokenizer
  tok_json = tk.to_str() if tk is not None else None
  bos_id = eos_id = None
  bos = eos = None
  if kind == "llama":
    if bos_eos_ids is None:
      bos_eos_ids = getattr(model, "hf_special_ids", None) or _smollm2_special_ids()
    bos_id, eos_id = bos_eos_ids
    first = lambda i: i[0] if isinstance(i, list) and i else i
    if tk is not None:
      bos = tk.id_to_token(first(bos_id)) if first(bos_id) is not None else None
      eos = tk.id_to_token(first(eos_id)) if first(eos_id) is not None else None
  return _export.export_hf(params, kind, settings, out_dir, fmt, tokenizer_json=tok_json, bos_token=bos,
                           eos_token=eos, bos_id=bos_id, eos_id=eos_id,
                           model_max_length=8192 if kind == "llama" else MAX_TOKENS)
