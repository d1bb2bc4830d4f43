"""``python -m jquant export DIR --format compressed-tensors|gptq|awq --out HF_DIR``: a Hugging Face folder.

DIR is a checkpoint folder from ``python -m jquant quantize``. ``--format float`` with ``--model NAME|PATH`` instead
of DIR exports a float model (e.g. SmolLM2 from its GGUF, q/k rows back in HF's rotate-half layout).
"""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a quantized checkpoint folder as a Hugging Face folder (compressed-tensors, GPTQ or AWQ)"

FORMATS = ("compressed-tensors", "gptq", "awq", "float")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("dir", nargs="?", default=None, metavar="DIR",
                      help="a checkpoint folder from `python -m jquant quantize` (or give --model with --format float)")
  parser.add_argument("--model", default=None, metavar="NAME|PATH", help="export a float model (--format float)")
  parser.add_argument("--format", required=True, choices=FORMATS,
                      help="compressed-tensors (transformers + vLLM), gptq (v1 if symmetric, else gptq_v2), awq "
                           "(4-bit GEMM), float")
  parser.add_argument("--out", required=True, metavar="HF_DIR")


def run(args: argparse.Namespace) -> int:
  from jquant import models  # pylint: disable=import-outside-toplevel
  from jquant.cli import common  # pylint: disable=import-outside-toplevel

  if (args.dir is None) == (args.model is None):
    raise ValueError("give either a checkpoint DIR or --model NAME|PATH (not both).")
  if args.dir is not None:
    _, model, params, meta = common.load_checkpoint(args.dir)
    if meta.get("method") in ("smoothquant", "llm_int8"):
      raise ValueError(f"{args.dir}: {meta['method']} quantizes activations at run time, which the weight-only "
                       f"formats here cannot express; export a weight-only checkpoint (rtn, gptq, awq).")
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
