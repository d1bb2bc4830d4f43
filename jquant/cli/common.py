"""Shared pieces of the CLI: method/spec construction, embedding quantization, checkpoint folders.

Models are looked up in `jquant.cli.registry` (re-exported here: ``MODELS``, `model_kind`, `load_model`). A quantized
checkpoint folder holds ``params.safetensors`` (jquant's bit-exact layout, `jquant/io/storage.py`), ``meta.json``
(model, kind, method and its settings, and ``runtime``: the run-time matmul and rotation the params need) and the
pipeline's report (``report.json`` + ``report.txt``), so ``python -m jquant eval DIR`` rebuilds the model that runs
from the record alone, never from the quantize flags.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jquant as jq
from jquant.cli.registry import MODELS, ModelKind, load_model, model_kind, with_matmul  # noqa: F401  (re-exported)

METHODS = ("rtn", "gptq", "awq", "smoothquant", "llm_int8", "hqq", "autoround")
DATA_FREE = ("rtn",)      # methods whose weights need no calibration data (quantized without a calibration pass)
EMBEDDINGS = ("int8", "int4", "float")


def log(msg: str) -> None:
  print(f"[jquant] {msg}", file=sys.stderr, flush=True)


GRIDS = ("minmax", "mse", "imatrix")


def weight_spec(bits: int, group_size: int | None, grid: str = "minmax") -> jq.QuantSpec:
  """The weight grid: 8 bit -> symmetric int8 per output channel; 4/3/2 bit -> asymmetric unsigned (GPTQ-style
  range containing 0) per group of ``group_size`` inputs, or per channel when ``group_size`` is None/0/-1.

  ``grid="mse"`` picks each group's range by an MSE search over shrink factors 1.0 .. 0.6 (40 steps) instead of
  its min/max: the reference GPTQ's ``--mse`` option (there 1.0 .. 0.2 with norm 2.4). With GPTQ it lowers
  SmolLM2 w4 g64 Hamlet ppl from 48.7 to 47.1. ``grid="imatrix"`` returns the min/max spec: the importance-weighted
  search runs inside the method (`build_method`), which has the calibration statistics.
  """
  if grid not in GRIDS:
    raise ValueError(f"grid {grid!r} is not supported; use one of {GRIDS}.")
  if bits == 8:
    return jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
  qtype = {4: jq.UINT4, 3: jq.UINT3, 2: jq.UINT2}.get(bits)
  if qtype is None:
    raise ValueError(f"--bits {bits} is not supported; use 8, 4, 3 or 2.")
  gran = jq.PerChannel(axis=-1) if not group_size or group_size < 0 else jq.PerGroup(axis=0, size=group_size)
  calibration = jq.solvers.grid.DEFAULT_SEARCH if grid == "mse" else None
  return jq.QuantSpec(qtype=qtype, granularity=gran, symmetric=False, calibration=calibration)


def embedding_spec(kind: str) -> jq.QuantSpec | None:
  """The token embedding's grid: ``int8`` symmetric per row (one scale per token: the default), ``int4`` asymmetric
  in groups of 64 along the hidden axis (as `benchmarks/decode.py` runs it), ``float`` (None: kept as it is)."""
  if kind not in EMBEDDINGS:
    raise ValueError(f"--embedding {kind!r} is not supported; use one of {EMBEDDINGS}.")
  if kind == "int8":
    return jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=0))
  if kind == "int4":
    return jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=1, size=64), symmetric=False)
  return None


def quantize_embedding(model: ModelKind | str, qparams, params, kind: str):
  """``qparams`` with the token embedding (SmolLM2: also the tied LM head) of the float ``params`` of ``model`` (a
  kind or its name) quantized by `embedding_spec` (``kind="float"``: ``qparams`` unchanged). Other leaves are
  shared, not copied."""
  from jquant.ptq.access import copy_dicts, get_in, set_in  # pylint: disable=import-outside-toplevel
  spec = embedding_spec(kind)
  if spec is None:
    return qparams
  path = (model_kind(model) if isinstance(model, str) else model).embedding_path
  qa = jq.quantize_params({"table": get_in(params, path)}, jq.QuantConfig(rules=[jq.QuantRule("table", spec)]))
  out = copy_dicts(qparams)
  set_in(out, path, qa["table"])
  return out


def quantize_data_free(model, params, method):
  """The block linears of ``model`` quantized by a data-free method (``method.solve`` without statistics): the same
  kernels and values `jquant.ptq.quantize_model` gives, without its calibration pass."""
  from jquant.ptq.access import copy_dicts, get_in, set_in  # pylint: disable=import-outside-toplevel
  out = copy_dicts(params)
  for name in model.block_names():
    for group in model.linear_groups():
      for p in group:
        qa, _, _ = method.solve(get_in(params[name], f"{p}/kernel"), None)
        set_in(out[name], f"{p}/kernel", qa)
  return out


def bf16_nbytes(params) -> int:
  """Bytes of the float params stored in bfloat16 (2 bytes per float element): the sizes' reference."""
  return 2 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating))


FORMATS = ("int", "mxfp8", "mxfp4", "nvfp4")


def format_spec(fmt: str) -> jq.QuantSpec:
  """The weight spec of a microscaling ``--format``: MXFP8 (E4M3) / MXFP4 in blocks of 32, NVFP4 in blocks of 16,
  along the input features (the format fixes bits and block; weight-only)."""
  from jquant.ptq.methods.act_quant import MX_FORMATS  # pylint: disable=import-outside-toplevel
  qt = MX_FORMATS.get(fmt)
  if qt is None:
    raise ValueError(f"--format {fmt!r} is not a microscaling format; use one of {FORMATS[1:]} (or 'int').")
  return jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=qt.block_size))


def build_method(name: str, bits: int, group_size: int | None, act_order: bool = False, grid: str = "minmax",
                 fmt: str = "int"):
  """A `jq.ptq` method config from CLI settings.

  SmoothQuant runs jquant's variant: migration scales on every foldable group (``smooth="all"``) and GPTQ on the
  smoothed INT8 weights (``gptq=``); the reference settings are ``jq.ptq.SmoothQuant()``.
  """
  from jquant import ptq  # pylint: disable=import-outside-toplevel
  if fmt not in FORMATS:
    raise ValueError(f"--format {fmt!r} is not supported; use one of {FORMATS}.")
  if fmt != "int":
    if name not in ("rtn", "gptq"):
      raise ValueError(f"--format {fmt} works with --method rtn or gptq (the format's grid), got {name!r}.")
    spec = format_spec(fmt)
    return ptq.RTN(spec) if name == "rtn" else ptq.GPTQ(spec, act_order=act_order)
  in_method = "imatrix" if grid == "imatrix" else "minmax"     # the imatrix search needs the calibration stats
  if grid == "imatrix" and name not in ("rtn", "gptq"):
    raise ValueError(f"--grid imatrix works with --method rtn or gptq, got --method {name}.")
  if name == "rtn":
    return ptq.RTN(weight_spec(bits, group_size, grid), grid=in_method)
  if name == "gptq":
    return ptq.GPTQ(weight_spec(bits, group_size, grid), act_order=act_order, grid=in_method)
  if name == "autoround":
    if bits == 8:
      raise ValueError("autoround learns 4/3/2-bit group rounding; use --bits 4, 3 or 2.")
    return ptq.AutoRound(weight_spec(bits, group_size))
  if name == "hqq":
    if bits == 8:
      raise ValueError("hqq solves 4/3/2-bit asymmetric group zero points; use --bits 4, 3 or 2.")
    return ptq.HQQ(weight_spec(bits, group_size))
  if name == "awq":
    return ptq.AWQ(weight_spec(bits, group_size, grid))
  if name == "smoothquant":
    if bits != 8:
      raise ValueError(f"smoothquant is W8A8; got --bits {bits}. Use --bits 8.")
    return ptq.SmoothQuant(smooth="all", gptq=ptq.GPTQ(ptq.SmoothQuant.weight_spec()))
  if name == "llm_int8":
    if bits != 8:
      raise ValueError(f"llm_int8 uses int8 weights; got --bits {bits}. Use --bits 8.")
    return ptq.LLMInt8()
  raise ValueError(f"unknown method {name!r}; choose one of {METHODS}.")


def with_act_bits(method, act_bits: int | None, act_format: str | None = None):
  """``method`` whose runtime also quantizes activations per token to ``act_bits`` (8 or 4), or in the
  microscaling ``act_format`` (mxfp8 / mxfp4 / nvfp4, per block; its bits are the format's); None: unchanged."""
  if act_bits is None and act_format is None:
    return method
  flag = f"--act-format {act_format}" if act_format else f"--act-bits {act_bits}"
  if act_format and act_bits is not None:
    raise ValueError(f"give --act-bits (int activations) or --act-format (microscaling), not both; got --act-bits "
                     f"{act_bits} {flag}.")
  if getattr(method, "matmul", None) is not None:
    raise ValueError(f"{flag}: {method.name} already quantizes activations; use it with a weight-only "
                     "method (rtn, gptq, awq).")
  from jquant import ptq  # pylint: disable=import-outside-toplevel
  return ptq.ActQuant(method, act_bits, act_format or "int")


params_nbytes = jq.params.params_nbytes


def check_output_dir(out: str | Path, *, overwrite: bool = False) -> None:
  """ValueError if ``out`` is a non-empty folder (without ``overwrite``) or a file; run before any work."""
  from jquant.io.atomic import check_output_dir as _check  # pylint: disable=import-outside-toplevel
  _check(out, overwrite=overwrite)


def save_checkpoint(out: str | Path, params, meta: dict[str, Any], *, overwrite: bool = False,
                    files: dict[str, str] | None = None, tensors: dict[str, Any] | None = None) -> Path:
  """Writes params.safetensors, meta.json (and ``files``: name -> text, ``tensors``: name -> array tree) as one
  atomic folder: written beside ``out`` and renamed into place, so a failure leaves no partial checkpoint and
  ``overwrite`` leaves no stale files."""
  from jquant.io.atomic import atomic_directory  # pylint: disable=import-outside-toplevel
  out = Path(out)
  with atomic_directory(out, overwrite=overwrite) as tmp:
    jq.io.save_safetensors(tmp / "params.safetensors", params)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    for name, text in (files or {}).items():
      (tmp / name).write_text(text)
    for name, tree in (tensors or {}).items():
      jq.io.save_safetensors(tmp / name, tree)
  return out


_META_KEYS = {"model": str, "method": str, "bits": int}


def read_meta(path: Path) -> dict[str, Any]:
  """meta.json of a checkpoint folder, validated; ValueError naming the file for invalid JSON or missing keys."""
  f = path / "meta.json"
  try:
    meta = json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{f}: invalid JSON ({e}); the checkpoint folder is damaged, re-run quantize.") from None
  except UnicodeDecodeError:
    raise ValueError(f"{f}: not UTF-8 text; the checkpoint folder is damaged, re-run quantize.") from None
  if not isinstance(meta, dict):
    raise ValueError(f"{f}: expected a JSON object with {sorted(_META_KEYS)}, got {type(meta).__name__}.")
  for key, typ in _META_KEYS.items():
    if key not in meta:
      raise ValueError(f"{f}: missing key {key!r} (expected {sorted(_META_KEYS)}); the checkpoint folder is damaged "
                       "or was not written by `python -m jquant quantize`.")
    if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
      raise ValueError(f"{f}: {key!r} must be a {typ.__name__}, got {meta[key]!r}.")
  if meta["method"] not in METHODS:
    raise ValueError(f"{f}: unknown method {meta['method']!r}; choose one of {METHODS} (the checkpoint folder is "
                     "damaged or was written by a newer jquant).")
  if not isinstance(meta.get("runtime", {}), dict):
    raise ValueError(f"{f}: 'runtime' must be a JSON object, got {meta['runtime']!r}; re-run quantize.")
  return meta


def _matmul_types() -> dict[str, type]:
  from jquant.ptq import methods  # pylint: disable=import-outside-toplevel
  return {cls.__name__: cls for cls in (methods.W8A8Matmul, methods.LLMInt8Matmul, methods.ActQuantMatmul)}


def runtime_record(method, rotate: bool = False) -> dict[str, Any]:
  """What the runtime needs to run a checkpoint of ``method``, for ``meta.json``: ``matmul`` (None: `jq.qdot`; else
  the activation-quantizing matmul's type and fields, e.g. ``{"type": "W8A8Matmul", "act": "per_token"}``) and
  ``rotate`` (rotated params: untied head, online Hadamard before down_proj)."""
  mm = getattr(method, "matmul", None)
  if mm is not None and type(mm).__name__ not in _matmul_types():
    raise ValueError(f"{method.name}: its run-time matmul {type(mm).__name__} cannot be recorded in meta.json; "
                     f"known: {sorted(_matmul_types())}.")
  return {"matmul": None if mm is None else {"type": type(mm).__name__, **dataclasses.asdict(mm)},
          "rotate": bool(rotate)}


def _legacy_runtime(meta: dict) -> dict[str, Any]:
  """The runtime record of a meta.json written before ``runtime`` was recorded: W8A8 for SmoothQuant, LLM.int8 for
  llm_int8, per-token ``act_bits`` activations otherwise (the matmuls those checkpoints ran with)."""
  mm = {"smoothquant": {"type": "W8A8Matmul", "act": "per_token"},
        "llm_int8": {"type": "LLMInt8Matmul", "threshold": 6.0}}.get(meta.get("method"))
  if mm is None and meta.get("act_bits") is not None:
    mm = {"type": "ActQuantMatmul", "act_bits": meta["act_bits"]}
  return {"matmul": mm, "rotate": bool(meta.get("rotate"))}


def runtime_of(meta: dict) -> dict[str, Any]:
  """A checkpoint's runtime record (`runtime_record`; derived for a meta.json written before it was recorded)."""
  return _legacy_runtime(meta) if meta.get("runtime") is None else meta["runtime"]


def runtime_matmul(meta: dict, source: Path | str = "meta.json"):
  """The run-time matmul a checkpoint's ``meta`` records (None: `jq.qdot`); ValueError naming ``source`` if the
  record is not one `runtime_record` writes."""
  mm = runtime_of(meta).get("matmul")
  if mm is None:
    return None
  types = _matmul_types()
  if not isinstance(mm, dict) or mm.get("type") not in types:
    raise ValueError(f"{source}: runtime.matmul {mm!r} is not a recorded matmul (a dict whose 'type' is one of "
                     f"{sorted(types)}); the checkpoint folder is damaged, re-run quantize.")
  fields = {k: v for k, v in mm.items() if k != "type"}
  try:
    return types[mm["type"]](**fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: runtime.matmul {mm!r} is invalid ({e}); re-run quantize.") from None


def load_checkpoint(path: str | Path):
  """(model kind, model built with the recorded runtime, params, meta); a Hugging Face folder (config.json, no
  meta.json) loads through `jquant.models.from_pretrained` (meta ``{"model": path, "format": "hf"}``)."""
  path = Path(path)
  if (path / "config.json").is_file() and not (path / "meta.json").is_file():   # a Hugging Face folder
    from jquant import models  # pylint: disable=import-outside-toplevel
    model, params = models.from_pretrained(path)
    return model_kind(str(path)), model, params, {"model": str(path), "format": "hf"}
  if not (path / "meta.json").is_file() or not (path / "params.safetensors").is_file():
    raise ValueError(f"{path} is not a jquant checkpoint folder (needs meta.json and params.safetensors, as "
                     "written by `python -m jquant quantize ... --out DIR`).")
  meta = read_meta(path)
  matmul = runtime_matmul(meta, path / "meta.json")
  model, _ = load_model(meta["model"], matmul=matmul)
  if runtime_of(meta).get("rotate"):   # rotated: Llama untied head + online R4; BERT online input rotations
    from jquant.models.rotation import rotated_model  # pylint: disable=import-outside-toplevel
    model = rotated_model(model)
  params = jq.io.load_safetensors(path / "params.safetensors")
  return model_kind(meta["model"]), model, params, meta
