"""``python -m jquant export DIR --format compressed-tensors|gptq|awq --out HF_DIR``: a Hugging Face folder.

DIR is a checkpoint folder from ``python -m jquant quantize``. ``--format float`` with ``--model NAME|PATH`` instead
of DIR exports a float model (e.g. SmolLM2 from its GGUF, q/k rows back in HF's rotate-half layout).
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

import jquant as jq

NAME = "export"
HELP = "export a quantized checkpoint folder as a Hugging Face folder (compressed-tensors, GPTQ or AWQ)"
EPILOG = """examples:
  python -m jquant export q/ --format compressed-tensors --out smol-w4-ct/   # transformers / vLLM
  python -m jquant export q/ --format gptq --out smol-w4-gptq/
  python -m jquant export --model smollm2 --format float --out smol-fp/     # the float model as an HF folder
"""

FORMATS = ("compressed-tensors", "gptq", "awq", "float")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("dir", nargs="?", default=None, metavar="DIR",
                      help="a checkpoint folder from `python -m jquant quantize` (or give --model with --format float)")
  parser.add_argument("--model", default=None, metavar="NAME|PATH", help="export a float model (--format float)")
  parser.add_argument("--format", required=True, choices=FORMATS,
                      help="compressed-tensors (transformers + vLLM), gptq (v1 if symmetric, else gptq_v2), awq "
                           "(4-bit GEMM), float")
  parser.add_argument("--out", required=True, metavar="HF_DIR")


def _float_embedding(params, kind):
  """The HF formats here quantize linear layers only: a quantized token embedding is written dequantized (float32),
  with a note on stderr."""
  from jquant.cli import common  # pylint: disable=import-outside-toplevel
  from jquant.ptq.access import copy_dicts, get_in, set_in  # pylint: disable=import-outside-toplevel
  path = kind.embedding_path
  emb = get_in(params, path)
  if not isinstance(emb, jq.QArray):
    return params
  common.log(f"note: {path} is stored as {emb.qtype.name} in jquant; export formats hold "
             "quantized linears only, so it is written dequantized (float32)")
  out = copy_dicts(params)
  set_in(out, path, jq.dequantize(emb, jnp.float32))
  return out


def run(args: argparse.Namespace) -> int:
  from jquant import models  # pylint: disable=import-outside-toplevel
  from jquant.cli import common  # pylint: disable=import-outside-toplevel

  if (args.dir is None) == (args.model is None):
    raise ValueError("give either a checkpoint DIR or --model NAME|PATH (not both).")
  if args.dir is not None:
    kind, model, params, meta = common.load_checkpoint(args.dir)
    if meta.get("method") in ("smoothquant", "llm_int8"):
      raise ValueError(f"{args.dir}: {meta['method']} quantizes activations at run time, which the weight-only "
                       f"formats here cannot express; export a weight-only checkpoint (rtn, gptq, awq).")
    if getattr(model, "matmul", None) is not None or common.runtime_of(meta).get("rotate"):
      raise ValueError(f"{args.dir}: --act-bits / --rotate checkpoints need run-time activation quantization or an "
                       "online Hadamard transform, which these formats cannot express; export a checkpoint quantized "
                       "without them.")
    params = _float_embedding(params, kind)
  else:
    model, params = common.load_model(args.model)
  notes = models.export_pretrained(model, params, args.out, args.format)
  kinds: dict[str, int] = {}
  for how in notes.values():
    kinds[how] = kinds.get(how, 0) + 1
  for how, n in sorted(kinds.items()):
    print(f"{n:4d} linear layers: {how}")
  print(f"saved {args.out}")
  return 0
