"""SmolLM2 perplexity through 4-bit KV caches (int4 groups, symmetric / asymmetric, Hadamard-rotated; NVFP4) vs
the float and int8 caches.

    .venv/bin/python benchmarks/kv_cache_4bit.py --on calib [--configs ...]   # choose settings here
    .venv/bin/python benchmarks/kv_cache_4bit.py --on hamlet --configs fp32,int8,int4,nvfp4

``calib``: 4 random 512-token windows of the other plays (seed 1; the settings are chosen here), ``hamlet``: the
evaluation text, 8 x 512 windows as ``python -m jquant eval --kv-cache``. Every row runs the same cached prefill
(`jquant.inference.cached_perplexity`: attention reads keys / values back from the cache). A config name is
``fp32``, ``int8``, ``fp8``, ``nvfp4`` or ``int4`` with optional suffixes ``-g<size>`` (group), ``-asym`` and
``-rot`` (Hadamard rotation), e.g. ``int4-g32-asym-rot``, ``nvfp4-rot``.
"""

import argparse
import time


from jquant import eval as jeval
from jquant import inference
from jquant.cli import common

DEFAULT = ("fp32,int8,int4-g64,int4-g32,int4-g16,int4-g64-asym,int4-g32-asym,int4-g64-rot,int4-g32-rot,"
           "int4-g32-asym-rot,nvfp4,nvfp4-rot")


def parse(name: str) -> inference.KVCacheConfig:
  """The KVCacheConfig of a config name (see the module doc)."""
  parts = name.split("-")
  dtype = {"fp32": "float32", "fp8": "fp8_e4m3"}.get(parts[0], parts[0])
  kw = {}
  for p in parts[1:]:
    if p.startswith("g"):
      kw["group_size"] = int(p[1:])
    elif p == "asym":
      kw["symmetric"] = False
    elif p == "rot":
      kw["rotate"] = True
    else:
      raise ValueError(f"unknown config suffix {p!r} in {name!r}")
  return inference.KVCacheConfig(dtype, **kw)


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--on", choices=("calib", "hamlet"), default="calib")
  ap.add_argument("--configs", default=DEFAULT)
  ap.add_argument("--windows", type=int, default=None, help="default: 4 (calib), 8 (hamlet)")
  args = ap.parse_args()
  model, params = common.load_model("smollm2")
  if args.on == "calib":
    n = args.windows or 4
    kw = dict(ids=jeval.lm_calibration_windows(model, n, 512, seed=1).reshape(-1), windows=n)
  else:
    kw = dict(windows=args.windows or 8)
  base = None
  print(f"| cache ({args.on}) | ppl | vs fp32 cache | bytes / token / layer | s |")
  print("|---|---|---|---|---|")
  for name in args.configs.split(","):
    cfg = parse(name)
    t0 = time.perf_counter()
    r = inference.cached_perplexity(model, params, cfg, seq_len=512, **kw)
    per_tok = inference.cache_nbytes(inference.new_cache(model, cfg, 1, 1)) / model.config.num_layers
    base = r.ppl if base is None and cfg.dtype == "float32" else base
    delta = "" if base is None else f"{100 * (r.ppl / base - 1):+.2f}%"
    print(f"| {name} | {r.ppl:.3f} | {delta} | {per_tok:.0f} | {time.perf_counter() - t0:.0f} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
