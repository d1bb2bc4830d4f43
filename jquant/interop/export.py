"""Write a jquant params tree as a Hugging Face model folder: float, compressed-tensors, GPTQ or AWQ.

``export_hf(params, kind, settings, out_dir, fmt, tokenizer_json=...)`` writes ``config.json`` (with
``quantization_config`` for quantized formats), ``model.safetensors`` (metadata ``{"format": "pt"}``),
``generation_config.json``, and ``tokenizer.json`` + ``tokenizer_config.json`` when a tokenizer is given
(``quantize_config.json`` too for GPTQ, as GPTQModel writes it). NumPy only, no torch.

Formats and what they can express (a checkpoint that a format cannot hold exactly raises ValueError naming one
that can):

* ``compressed-tensors`` (pack-quantized): 4/8-bit, symmetric or asymmetric, group or channel, act-order g_idx,
  mixed settings across layers (one config group per setting), float layers listed in ``ignore``.
* ``gptq``: 2/4/8-bit, one setting for every block linear; symmetric layers are written as v1
  (``checkpoint_format: "gptq"``), asymmetric ones as ``gptq_v2`` (v1's zero-1 cannot hold a zero of 0).
* ``awq``: 4-bit GEMM, no act-order, one setting; symmetric weights are written with zero point 8.

GPTQ/AWQ scales are written float16 when that is exact, else float32 (readers cast them to the activation
dtype); compressed-tensors scales keep the checkpoint's dtype. q/k rows go back to HF's rotate-half layout.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jquant.core.paths import get_in
from jquant.core.qarray import QArray
from jquant.interop import codecs, hf_config
from jquant.interop.records import qarray_to_record
from jquant.interop.st import write_safetensors

__all__ = ["FORMATS", "export_hf"]

FORMATS = ("float", "compressed-tensors", "gptq", "awq")


def _get(tree: dict, path: str) -> Any:
  if (node := get_in(tree, path, None)) is None:
    raise ValueError(f"params lack {path!r}; does the tree belong to this model config?")
  return node


def _host_float(a: Any, name: str) -> np.ndarray:
  if isinstance(a, QArray):
    raise ValueError(f"{name} is quantized ({a.qtype.name}); HF formats here quantize linear layers only. Keep "
                     f"embeddings and norms in float to export.")
  a = np.asarray(jax.device_get(a))
  if a.dtype not in (np.float32, np.float16, np.dtype(ml_dtypes.bfloat16)):
    a = a.astype(np.float32)
  return a


def _scheme_key(rec: codecs.IntRecord) -> tuple:
  return rec.bits, rec.group_size, rec.zero is None


def _fp16_if_exact(scale: np.ndarray) -> np.ndarray:
  s16 = scale.astype(np.float16)
  return s16 if np.array_equal(s16.astype(np.float32), scale.astype(np.float32)) else scale.astype(np.float32)


def export_hf(params: dict, kind: str, settings: dict[str, Any], out_dir: str | Path, fmt: str = "float", *,
              tokenizer_json: str | None = None, bos_token: str | None = None, eos_token: str | None = None,
              bos_id: int | None = None, eos_id: int | None = None, model_max_length: int = 8192) -> dict[str, str]:
  """Writes the HF folder; returns {HF module: how it was written}."""
  if fmt not in FORMATS:
    raise ValueError(f"format {fmt!r} is not supported; choose one of {FORMATS}.")
  if kind not in ("llama", "bert"):
    raise ValueError(f"kind {kind!r} is not supported; choose 'llama' or 'bert'.")
  lin, other = (hf_config.llama_names if kind == "llama" else hf_config.bert_names)(settings)
  hd = settings["hidden"] // settings["num_heads"]
  tensors: dict[str, np.ndarray] = {}
  records: dict[str, codecs.IntRecord] = {}
  floats: list[str] = []
  for module, (ours, role) in lin.items():
    kernel = _get(params, f"{ours}/kernel")
    inv = None
    if role != "plain":
      inv = np.argsort(hf_config.qk_perm(settings["num_heads"] if role == "q" else settings["num_kv_heads"], hd))
    if isinstance(kernel, QArray):
      rec = qarray_to_record(kernel, ours)
      if inv is not None:
        rec = dataclasses.replace(rec, codes=rec.codes[:, inv], scale=rec.scale[:, inv],
                                  zero=None if rec.zero is None else rec.zero[:, inv])
      records[module] = rec
    else:
      w = _host_float(kernel, f"{ours}/kernel")
      tensors[f"{module}.weight"] = np.ascontiguousarray((w if inv is None else w[:, inv]).T)
      floats.append(module)
    if get_in(params, f"{ours}/bias", None) is not None:
      b = _host_float(_get(params, f"{ours}/bias"), f"{ours}/bias")
      tensors[f"{module}.bias"] = b if inv is None else b[inv]
  for name, ours in other.items():
    tensors[name] = _host_float(_get(params, ours), ours)
  if records and fmt == "float":
    raise ValueError("the params hold quantized kernels; choose --format compressed-tensors, gptq or awq (float "
                     "export would need a dequantized copy).")
  if not records and fmt != "float":
    raise ValueError(f"format {fmt!r} asked for, but no linear kernel is quantized; quantize first "
                     f"(python -m jquant quantize ...) or export with format 'float'.")
  notes = {m: "float" for m in floats}
  qc = None
  if records:
    qc = _quantize(fmt, records, floats, tensors, notes)
    qc_ignore = set(floats) | ({"lm_head"} if kind == "llama" else {"pooler.dense"})
    if fmt == "compressed-tensors":
      qc["ignore"] = sorted(qc_ignore)
  dtype = "float32"
  if kind == "llama":
    config = hf_config.llama_hf_config(settings, dtype, bos_id, eos_id)
  else:
    config = hf_config.bert_hf_config(settings, dtype)
  if qc is not None:
    config["quantization_config"] = qc
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_safetensors(out / "model.safetensors", tensors, {"format": "pt"})
  (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  if qc is not None and fmt == "gptq":
    (out / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")
  gen: dict[str, Any] = {"_from_model_config": True}
  if bos_id is not None:
    gen["bos_token_id"] = bos_id
  if eos_id is not None:
    gen["eos_token_id"] = eos_id
  (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
  if tokenizer_json is not None:
    (out / "tokenizer.json").write_text(tokenizer_json)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
          "clean_up_tokenization_spaces": False}
    if kind == "bert":
      tc.update(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]",
                do_lower_case=True)
    if bos_token is not None:
      tc["bos_token"] = bos_token
    if eos_token is not None:
      tc["eos_token"] = eos_token
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
  return notes


def _quantize(fmt: str, records: dict[str, codecs.IntRecord], floats: list[str], tensors: dict, notes: dict) -> dict:
  block_floats = [m for m in floats if m != "lm_head"]
  keys = {_scheme_key(r) for r in records.values()}
  if fmt in ("gptq", "awq"):
    if block_floats:
      raise ValueError(f"{fmt} checkpoints quantize every linear layer of every block, but {block_floats[:3]} "
                       f"{'...' if len(block_floats) > 3 else ''} are float; export as 'compressed-tensors' (its "
                       f"'ignore' list keeps layers in float).")
    if len(keys) > 1:
      raise ValueError(f"{fmt} needs one (bits, group_size, symmetric) setting for all layers, got {sorted(keys)}; "
                       f"export as 'compressed-tensors' (one config group per setting).")
  if fmt == "gptq":
    bits, g, sym = next(iter(keys))
    act = any(r.g_idx is not None for r in records.values())
    for m, r in records.items():
      for k, v in codecs.gptq_encode(r, v2=not sym).items():
        tensors[f"{m}.{k}"] = _fp16_if_exact(v) if k == "scales" else v
      notes[m] = f"gptq {bits}-bit g{g} {'sym' if sym else 'asym (v2)'}"
    return {"quant_method": "gptq", "bits": bits, "group_size": g, "desc_act": act, "sym": sym,
            "checkpoint_format": "gptq" if sym else "gptq_v2", "lm_head": False, "static_groups": False,
            "true_sequential": True, "damp_percent": 0.01, "pack_dtype": "int32",
            "meta": {"quantizer": ["jquant:0.1.0"]}}
  if fmt == "awq":
    bits, g, _ = next(iter(keys))
    for m, r in records.items():
      for k, v in codecs.awq_encode(r).items():
        tensors[f"{m}.{k}"] = _fp16_if_exact(v) if k == "scales" else v
      notes[m] = f"awq 4-bit g{g}"
    return {"quant_method": "awq", "bits": bits, "group_size": g, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}
  groups: dict[tuple, list[str]] = {}
  for m, r in records.items():
    groups.setdefault(_scheme_key(r) + (r.g_idx is not None,), []).append(m)
  act_by_key: dict[tuple, bool] = {}
  for key, mods in groups.items():
    act_by_key[key[:3]] = act_by_key.get(key[:3], False) or key[3]
  config_groups = {}
  for i, (key, act) in enumerate(sorted(act_by_key.items())):
    bits, g, sym = key
    mods = [m for m, r in records.items() if _scheme_key(r) == key]
    for m in mods:
      for k, v in codecs.ct_pack_encode(records[m], with_g_idx=act).items():
        tensors[f"{m}.{k}"] = v
      notes[m] = f"compressed-tensors pack-quantized {bits}-bit g{g} {'sym' if sym else 'asym'}"
    weights = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "group" if g > 0 else "channel",
               "group_size": g if g > 0 else None, "dynamic": False, "actorder": "group" if act else None,
               "observer": "minmax", "observer_kwargs": {}, "block_structure": None}
    targets = ["Linear"] if len(act_by_key) == 1 else sorted(mods)
    config_groups[f"group_{i}"] = {"targets": targets, "weights": weights, "input_activations": None,
                                   "output_activations": None, "format": "pack-quantized"}
  return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
          "config_groups": config_groups, "ignore": [], "kv_cache_scheme": None, "sparsity_config": {},
          "transform_config": {}, "global_compression_ratio": None}
