"""Prefill / decode tokens/s and weight + KV-cache bytes of jit-compiled generation, side by side:
fp32, bf16, W8A8 (int8 per-channel weights, dynamic per-token int8 activations), W4A16 (INT4 or UINT4 g64 weights,
bf16 activations), each with a float cache and with an int8 (and optionally fp8) KV cache. Ratios are vs bf16
with a bf16 cache. SmolLM2-135M real weights when the asset is installed, else a random model of the same shape.

  python benchmarks/decode.py [--prompt 128] [--new 32] [--batch 1] [--repeats 3] [--layers N] [--random]
                              [--configs fp32,bf16,w8a8,w4a16] [--caches float,int8,fp8_e4m3] [--w4 int4|uint4]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import jquant as jq
from jquant import inference as jqi
from jquant.models import LlamaConfig, SmolLM2
from jquant.ops import qdot

_ACT_SPEC = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken())


def w8a8_dynamic(x, kernel):
  """Linear matmul for W8A8: dynamic per-token int8 activations x int8 per-channel weights through ``qdot``
  (int32 accumulation on XLA, the int8 Pallas kernel on GPU); the same numerics as
  ``jquant.solvers.w8a8_matmul(x, w, act="per_token")``."""
  return qdot(jq.quantize(x, _ACT_SPEC), kernel, out_dtype=x.dtype)


def load(args):
  if not args.random:
    try:
      model, params = jqi_load()
    except Exception as e:  # pylint: disable=broad-except  (asset missing: fall back to the same shapes)
      print(f"SmolLM2 asset unavailable ({type(e).__name__}: {e}); using a random model of the same shape.")
    else:
      cfg = model.config
      if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
        params = {k: v for k, v in params.items() if not k.startswith("layers_") or int(k[7:]) < args.layers}
      return SmolLM2(cfg), params, "SmolLM2-135M (real weights)"
  cfg = LlamaConfig() if not args.layers else dataclasses.replace(LlamaConfig(), num_layers=args.layers)
  model = SmolLM2(cfg)
  params = model.init(jax.random.key(0))
  return model, params, "random-init model, SmolLM2-135M shapes"


def jqi_load():
  from jquant.models import load_smollm2  # pylint: disable=import-outside-toplevel

  return load_smollm2()


def weight_variants(params, names, w4):
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  out = {}
  if "fp32" in names:
    out["fp32"] = (params, None)
  if "bf16" in names:
    out["bf16"] = (bf16, None)
  if "w8a8" in names:
    rules = [jq.QuantRule(r".*/kernel", jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))),
             jq.QuantRule(r"embed_tokens/embedding", jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=0)))]
    out["w8a8"] = (jq.quantize_params(bf16, jq.QuantConfig(rules=rules)), w8a8_dynamic)
  if "w4a16" in names:
    qt, sym = (jq.INT4, True) if w4 == "int4" else (jq.UINT4, False)
    rules = [jq.QuantRule(r".*/kernel", jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=64),
                                                     symmetric=sym)),
             jq.QuantRule(r"embed_tokens/embedding", jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=1, size=64),
                                                                  symmetric=sym))]
    out[f"w4a16-{w4}-g64"] = (jq.quantize_params(bf16, jq.QuantConfig(rules=rules)), None)
  return out


def bench(model, params, matmul, cache_dtype, compute_dtype, args):
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(0, model.config.vocab_size, (args.batch, args.prompt)), jnp.int32)
  max_len = args.prompt + args.new - 1
  cc = jqi.KVCacheConfig(cache_dtype)
  empty = jqi.new_cache(model, cc, args.batch, max_len)
  run_prefill = lambda: jqi.prefill(model, params, prompt, empty, matmul=matmul, dtype=compute_dtype)
  t0 = time.perf_counter()
  logits, cache = jax.block_until_ready(run_prefill())
  first = jnp.argmax(logits, -1).astype(jnp.int32)
  run_decode = lambda: jqi.decode(model, params, first, cache, max_new_tokens=args.new, matmul=matmul,
                                  dtype=compute_dtype)
  jax.block_until_ready(run_decode())
  compile_s = time.perf_counter() - t0
  tp, td = [], []
  for _ in range(args.repeats):
    t = time.perf_counter(); jax.block_until_ready(run_prefill()); tp.append(time.perf_counter() - t)
    t = time.perf_counter(); jax.block_until_ready(run_decode()); td.append(time.perf_counter() - t)
  ctx_cache = jax.eval_shape(lambda: jqi.new_cache(model, cc, 1, args.context))
  return dict(prefill_tps=args.batch * args.prompt / min(tp), decode_tps=args.batch * (args.new - 1) / min(td),
              weights=jqi.params_nbytes(params), cache=jqi.cache_nbytes(cache), cache_ctx=jqi.cache_nbytes(ctx_cache),
              compile_s=compile_s)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--prompt", type=int, default=128)
  ap.add_argument("--new", type=int, default=32)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
  ap.add_argument("--context", type=int, default=2048, help="context length for the cache-memory column")
  ap.add_argument("--random", action="store_true", help="random-init model instead of the SmolLM2 asset")
  ap.add_argument("--configs", default="fp32,bf16,w8a8,w4a16")
  ap.add_argument("--caches", default="float,int8")
  ap.add_argument("--w4", choices=("int4", "uint4"), default="int4")
  args = ap.parse_args()
  model, params, what = load(args)
  print(f"model: {what}, {model.config.num_layers} layers; device: {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}); batch {args.batch}, prompt {args.prompt}, {args.new} new tokens")
  variants = weight_variants(params, args.configs.split(","), args.w4)
  rows = []
  for name, (p, matmul) in variants.items():
    float_cache = "float32" if name == "fp32" else "bfloat16"
    compute = jnp.float32 if name == "fp32" else jnp.bfloat16
    for c in args.caches.split(","):
      cache_dtype = float_cache if c == "float" else c
      r = bench(model, p, matmul, cache_dtype, compute, args)
      rows.append((f"{name} + {cache_dtype} cache", r))
      print(f"  done {rows[-1][0]}: compile {r['compile_s']:.1f}s", flush=True)
  base = next((r for n, r in rows if n == "bf16 + bfloat16 cache"), rows[0][1])
  mb = lambda b: b / 2**20
  print(f"\n{'config':34s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'x bf16':>7s} {'weights MB':>10s} "
        f"{'cache MB':>8s} {f'cache@{args.context} MB':>14s} {f'mem@{args.context} x bf16':>16s}")
  for n, r in rows:
    mem = (r["weights"] + r["cache_ctx"]) / (base["weights"] + base["cache_ctx"])
    print(f"{n:34s} {r['prefill_tps']:13.1f} {r['decode_tps']:12.2f} {r['decode_tps'] / base['decode_tps']:7.2f} "
          f"{mb(r['weights']):10.1f} {mb(r['cache']):8.2f} {mb(r['cache_ctx']):14.1f} {mem:16.3f}")


if __name__ == "__main__":
  main()
