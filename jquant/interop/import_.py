"""Read a Hugging Face model folder into a jquant params tree: float weights, or quantized weights straight into
QArrays (GPTQ v1/v2, AWQ GEMM, compressed-tensors pack-quantized / int-quantized / float-quantized).

``load_hf(path)`` returns an `HFModel`: the architecture kind ("llama" | "bert"), the model settings (kwargs of
``LlamaConfig`` / ``BertConfig``), the params tree (nested dicts; kernels (in, out), q/k rows in jquant's RoPE
layout), the tokenizer.json path and per-module notes. Every tensor's dtype and shape is checked against
config.json before use; a mismatch raises one ValueError naming the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jquant.core import granularity as gr
from jquant.core import qtypes
from jquant.core.paths import set_in
from jquant.core.qarray import QArray
from jquant.core.spec import QuantSpec
from jquant.interop import codecs, hf_config
from jquant.interop.records import record_to_qarray
from jquant.interop.st import SafetensorsDir

__all__ = ["HFModel", "load_hf", "QUANT_METHODS"]

QUANT_METHODS = ("gptq", "awq", "compressed-tensors")
_FLOAT = ("F32", "F16", "BF16")
_SKIP = (re.compile(r".*rotary_emb\.inv_freq$"), re.compile(r"^(bert\.)?embeddings\.position_ids$"),
         re.compile(r"^(bert\.)?pooler\..*"), re.compile(r".*\.(input_scale|output_scale|k_scale|v_scale)$"))


@dataclasses.dataclass
class HFModel:
  kind: str                     # "llama" | "bert"
  settings: dict[str, Any]      # LlamaConfig / BertConfig kwargs
  params: dict[str, Any]
  tokenizer_file: Path | None
  config: dict[str, Any]        # config.json as read
  notes: dict[str, str]         # module -> how it was loaded (format, bits, ...)


def _linear_shapes(kind: str, kw: dict) -> dict[str, tuple[int, int]]:
  """(out, in) of each linear role, keyed by the module's last HF name part."""
  h, i = kw["hidden"], kw["intermediate"]
  if kind == "llama":
    hd = h // kw["num_heads"]
    return {"q_proj": (kw["num_heads"] * hd, h), "k_proj": (kw["num_kv_heads"] * hd, h),
            "v_proj": (kw["num_kv_heads"] * hd, h), "o_proj": (h, kw["num_heads"] * hd), "gate_proj": (i, h),
            "up_proj": (i, h), "down_proj": (h, i), "lm_head": (kw["vocab_size"], h)}
  return {"query": (h, h), "key": (h, h), "value": (h, h), "attention.output.dense": (h, h),
          "intermediate.dense": (i, h), "output.dense": (h, i)}


def _shape_of(kind: str, kw: dict, module: str) -> tuple[int, int]:
  shapes = _linear_shapes(kind, kw)
  if kind == "llama":
    return shapes[module.split(".")[-1]]
  for key in ("attention.output.dense", "intermediate.dense", "output.dense"):
    if module.endswith(key):
      return shapes[key]
  return shapes[module.split(".")[-1]]


def _other_shape(kind: str, kw: dict, name: str) -> tuple[int, ...]:
  h = kw["hidden"]
  if name.endswith("word_embeddings.weight") or name.endswith("embed_tokens.weight"):
    return (kw["vocab_size"], h)
  if name.endswith("position_embeddings.weight"):
    return (kw["max_positions"], h)
  if name.endswith("token_type_embeddings.weight"):
    return (kw["type_vocab_size"], h)
  return (h,)


class _Reader:
  """Tensor access with the file name in every error, and bookkeeping of the tensors consumed."""

  def __init__(self, st: SafetensorsDir, prefix: str):
    self.st, self.prefix, self.used = st, prefix, set()

  def has(self, name: str) -> bool:
    return self.prefix + name in self.st

  def where(self, name: str) -> str:
    full = self.prefix + name
    return f"{self.st.file_of(full) if full in self.st else 'model.safetensors'}: {full}"

  def get(self, name: str, shape: tuple | None = None, dtypes: tuple[str, ...] = _FLOAT) -> np.ndarray:
    full = self.prefix + name
    if full not in self.st:
      raise ValueError(f"{self.st.path}: tensor {full!r} is missing (config.json implies it).")
    dt, shp = self.st.info(full)
    if dt not in dtypes or (shape is not None and shp != tuple(shape)):
      raise ValueError(f"{self.where(name)}: tensor is {dt} {shp}, but config.json implies "
                       f"{'/'.join(dtypes)} {tuple(shape) if shape else ''}.")
    self.used.add(full)
    return self.st.get(full)

  def module_tensors(self, module: str) -> dict[str, Any]:
    """{suffix: loader} for the tensors under ``module.`` (consumed when loaded)."""
    pre = f"{self.prefix}{module}."
    out = {}
    for k in self.st.keys():
      if k.startswith(pre) and "." not in k[len(pre):]:
        out[k[len(pre):]] = (lambda k=k: (self.used.add(k), self.st.get(k))[1])
    return out


def _ct_scheme(qc: dict, module: str) -> tuple[dict | None, str]:
  """The compressed-tensors (scheme, format) that applies to ``module`` (None if ignored / unmatched)."""
  def match(target: str) -> bool:
    if target.startswith("re:"):
      return re.match(target[3:], module) is not None
    return target in ("Linear", module) or module.endswith("." + target)
  if any(match(t) for t in qc.get("ignore") or []):
    return None, ""
  for name, grp in (qc.get("config_groups") or {}).items():
    if any(match(t) for t in grp.get("targets") or []):
      return grp, grp.get("format") or qc.get("format") or ""
  return None, ""


def _int_args(args: dict, where: str) -> tuple[int, int, bool]:
  bits = int(args.get("num_bits", 8))
  strategy = args.get("strategy") or ("group" if (args.get("group_size") or 0) > 0 else "channel")
  if strategy == "group":
    g = int(args["group_size"])
  elif strategy == "channel":
    g = -1
  else:
    raise ValueError(f"{where}: weight strategy {strategy!r} is not supported (group, channel).")
  return bits, g, bool(args.get("symmetric", True))


def _load_quantized(r: _Reader, qc: dict, module: str, n: int, k: int, dtype: str) -> tuple[Any, str] | None:
  """A QArray kernel (K, N) for ``module`` if the checkpoint holds it quantized, else None."""
  method = qc.get("quant_method")
  where = r.where(module)
  t = r.module_tensors(module)
  if method == "gptq":
    if "qweight" not in t:
      return None
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    if bits not in (2, 4, 8):
      raise ValueError(f"{where}: GPTQ {bits}-bit is not supported (2, 4, 8).")
    v2 = (qc.get("checkpoint_format") or qc.get("format") or "gptq") == "gptq_v2"
    rec = codecs.gptq_decode(t, k, n, bits, int(qc.get("group_size", -1)), bool(qc.get("sym", True)), v2, where)
    return record_to_qarray(rec, dtype), f"gptq{'_v2' if v2 else ''} {bits}-bit g{rec.group_size}"
  if method == "awq":
    if "qweight" not in t:
      return None
    if str(qc.get("version", "gemm")).lower() != "gemm":
      raise ValueError(f"{where}: AWQ version {qc.get('version')!r} is not supported; jquant reads version 'gemm'.")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    if bits != 4:
      raise ValueError(f"{where}: AWQ {bits}-bit is not supported (4-bit GEMM only).")
    rec = codecs.awq_decode(t, k, n, int(qc.get("group_size", qc.get("q_group_size", 128))), where)
    if np.all(rec.zero == 8):      # AWQ cannot store "symmetric": zero 8 everywhere is the symmetric grid
      rec.zero = None
    return record_to_qarray(rec, dtype), f"awq 4-bit g{rec.group_size}"
  scheme, fmt = _ct_scheme(qc, module)
  if scheme is None or not scheme.get("weights"):
    return None
  args = scheme["weights"]
  bits, g, sym = _int_args(args, where) if args.get("type", "int") == "int" else (8, -1, True)
  if fmt == "pack-quantized":
    rec = codecs.ct_pack_decode(t, k, n, bits, g, sym, where)
    return record_to_qarray(rec, dtype), f"compressed-tensors pack-quantized {bits}-bit g{g}"
  if fmt in ("int-quantized", "naive-quantized") and args.get("type", "int") == "int":
    ng = 1 if g == -1 else -(-k // g)
    w = r.get(f"{module}.weight", (n, k), ("I8",))
    sc = r.get(f"{module}.weight_scale", (n, ng))
    off = 2 ** (bits - 1)
    zero = None if sym else (r.get(f"{module}.weight_zero_point", (n, ng), ("I8", "I32")).T.astype(np.int32) + off)
    rec = codecs.IntRecord(codes=(w.T.astype(np.int32) + off).astype(np.uint8), scale=np.ascontiguousarray(sc.T),
                           zero=None if zero is None else zero.astype(np.uint8), g_idx=None, bits=bits, group_size=g)
    return record_to_qarray(rec, dtype), f"compressed-tensors {fmt} {bits}-bit g{g}"
  if fmt == "float-quantized" and args.get("type") == "float":
    strategy = args.get("strategy", "tensor")
    w = r.get(f"{module}.weight", (n, k), ("F8_E4M3",))
    if strategy == "tensor":
      sc, gran = r.get(f"{module}.weight_scale", None).reshape(1, 1), gr.PerTensor()
    elif strategy == "channel":
      sc, gran = r.get(f"{module}.weight_scale", (n, 1)).T, gr.PerChannel(axis=-1)
    else:
      raise ValueError(f"{where}: float-quantized strategy {strategy!r} is not supported (tensor, channel).")
    sdt = str(sc.dtype)
    sc = sc.astype(np.float32) if sdt not in ("float32", "float16", "bfloat16") else sc
    spec = QuantSpec(qtype=qtypes.FP8_E4M3, granularity=gran, symmetric=True, scale_dtype=str(sc.dtype))
    qa = QArray(qvalue=jnp.asarray(np.ascontiguousarray(w.T)), scale=jnp.asarray(np.ascontiguousarray(sc)),
                qtype=qtypes.FP8_E4M3, spec=spec, dtype=dtype)
    return qa, f"compressed-tensors float-quantized fp8 {strategy}"
  raise ValueError(f"{where}: compressed-tensors format {fmt!r} with {args.get('type')} weights is not supported "
                   f"(pack-quantized, int-quantized, float-quantized).")


def load_hf(path: str | Path, dtype: str = "float32") -> HFModel:
  """Reads a Hugging Face model folder (see module docstring)."""
  path = Path(path)
  cfg = hf_config.read_config(path)
  kind, kw = hf_config.model_settings(cfg, str(path / "config.json"))
  qc = cfg.get("quantization_config")
  if qc is not None and qc.get("quant_method") not in QUANT_METHODS:
    raise ValueError(f"{path / 'config.json'}: quant_method {qc.get('quant_method')!r} is not supported; jquant reads "
                     f"{list(QUANT_METHODS)}.")
  if qc is not None and qc.get("quant_method") == "compressed-tensors" and \
     qc.get("quantization_status", "compressed") != "compressed":
    raise ValueError(f"{path / 'config.json'}: compressed-tensors quantization_status "
                     f"{qc.get('quantization_status')!r}; jquant reads 'compressed' checkpoints.")
  if qc is not None:
    for key in ("dynamic", "sparsity_config", "transform_config"):
      if qc.get(key):
        raise ValueError(f"{path / 'config.json'}: quantization_config.{key} = {qc[key]!r} is not supported "
                         f"(per-module overrides, sparsity and rotations would change the weights); jquant reads "
                         f"checkpoints without it.")
  st = SafetensorsDir(path)
  prefix = "bert." if kind == "bert" and st.keys() and all(k.startswith("bert.") for k in st.keys()) else ""
  r = _Reader(st, prefix)
  lin, other = (hf_config.llama_names if kind == "llama" else hf_config.bert_names)(kw)
  params: dict[str, Any] = {}
  notes: dict[str, str] = {}
  perm = hf_config.qk_perm
  hd = kw["hidden"] // kw["num_heads"]
  for module, (ours, role) in lin.items():
    n, k = _shape_of(kind, kw, module)
    got = _load_quantized(r, qc, module, n, k, dtype) if qc is not None else None
    p = None if role == "plain" else perm(kw["num_heads"] if role == "q" else kw["num_kv_heads"], hd)
    if got is not None:
      kernel, notes[module] = got
      if p is not None:
        kernel = dataclasses.replace(kernel, qvalue=kernel.qvalue[:, p],
                                     scale=kernel.scale[:, p] if kernel.scale.shape[1] == n else kernel.scale,
                                     zero_point=None if kernel.zero_point is None else kernel.zero_point[:, p])
    else:
      kernel = r.get(f"{module}.weight", (n, k)).astype(np.float32).T
      kernel = jnp.asarray(np.ascontiguousarray(kernel if p is None else kernel[:, p]))
      notes[module] = "float"
    set_in(params, f"{ours}/kernel", kernel, create=True)
    last = module.split(".")[-1]
    if kind == "bert" or (last in ("q_proj", "k_proj", "v_proj") and kw["qkv_bias"]) or \
       (last == "o_proj" and kw["o_bias"]):
      b = r.get(f"{module}.bias", (n,)).astype(np.float32)
      set_in(params, f"{ours}/bias", jnp.asarray(b if p is None else b[p]), create=True)
  for name, ours in other.items():
    set_in(params, ours, create=True, value=jnp.asarray(r.get(name, _other_shape(kind, kw, name)).astype(np.float32)))
  tied_head = kind == "llama" and kw["tie_embeddings"]
  for k in st.keys():
    if k not in r.used and not any(s.match(k) for s in _SKIP) and not (tied_head and k == "lm_head.weight"):
      raise ValueError(f"{st.file_of(k)}: unexpected tensor {k!r} {st.info(k)}; it does not belong to a "
                       f"{cfg.get('architectures')} model with this config.json (or its quantization_config).")
  tok = path / "tokenizer.json"
  return HFModel(kind=kind, settings=kw, params=params, tokenizer_file=tok if tok.is_file() else None, config=cfg,
                 notes=notes)

