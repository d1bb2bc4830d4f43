"""RTN throughput of `jq.quantize_params` vs Qwix's jitted `qwix.quantize` on 1 GB of fp32 weights (16 x 4096^2).

Each (library, config) runs in a fresh subprocess so peak memory (ru_maxrss) is its own. Prints GB/s, the ratio
jquant/Qwix, and peak RSS over the input size. Qwix is optional (pip install qwix in a separate venv and run this
script with that interpreter and PYTHONPATH pointing at the jquant checkout).

  python benchmarks/quantize_params.py [--layers 16] [--dim 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import jax, jax.numpy as jnp, numpy as np
    lib, cfg, layers, dim, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    keys = jax.random.split(jax.random.key(0), layers)
    params = {f"layers_{i}": {"kernel": jax.random.normal(keys[i], (dim, dim), jnp.float32)} for i in range(layers)}
    jax.block_until_ready(params)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nbytes = layers * dim * dim * 4
    if lib == "jquant":
      import jquant as jq
      spec = (jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)) if cfg == "int8_channel" else
              jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=128)))
      qcfg = jq.QuantConfig(rules=[jq.QuantRule(r".*/kernel", spec)])
      run = lambda: jq.quantize_params(params, qcfg)
    elif lib == "qwix-equivalent":
      # what qwix.quantize(w, int8/int4, channelwise_axes=(1,), tiled_axes={0: 128} for int4) computes
      dt, bound, tile = (jnp.int8, 127.5, dim) if cfg == "int8_channel" else (jnp.int4, 7.5, 128)
      def qw(w):
        wt = w.reshape(dim // tile, tile, dim)
        s = jnp.max(jnp.abs(wt), axis=1, keepdims=True) / bound
        s = jnp.where(s == 0, jnp.ones_like(s), s)
        return jnp.round(wt / s).astype(dt).reshape(w.shape), s.reshape(dim // tile, dim)
      f = jax.jit(qw)
      run = lambda: jax.tree.map(f, params)
    else:
      import qwix
      if cfg == "int8_channel":
        f = jax.jit(lambda w: qwix.quantize(w, jnp.int8, channelwise_axes=(1,)))
      else:
        f = jax.jit(lambda w: qwix.quantize(w, jnp.int4, channelwise_axes=(1,), tiled_axes={0: 128}))
      run = lambda: jax.tree.map(f, params)
    jax.block_until_ready(run())                      # compile + warm up
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter(); out = run(); jax.block_until_ready(out); times.append(time.perf_counter() - t0)
      del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"lib": lib, "cfg": cfg, "gbps": nbytes / min(times) / 1e9, "best_s": min(times),
                      "peak_over_input": (peak - base + nbytes) / nbytes}))
""")


def run_child(lib, cfg, args):
  r = subprocess.run([sys.executable, "-c", CHILD, lib, cfg, str(args.layers), str(args.dim), str(args.repeats)],
                     capture_output=True, text=True)
  if r.returncode:
    return {"lib": lib, "cfg": cfg, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(r.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, default=16)
  ap.add_argument("--dim", type=int, default=4096)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per library")
  args = ap.parse_args()
  try:
    import qwix  # noqa: F401
    libs = ["jquant", "qwix"]
  except ImportError:
    libs = ["jquant", "qwix-equivalent"]
    print("qwix is not importable here: the baseline is 'qwix-equivalent', a plain jitted jnp re-implementation of "
          "what qwix.quantize computes (see the module docstring), not Qwix itself.")
  print(f"load average {os.getloadavg()}")
  print(f"{args.layers} x {args.dim}^2 fp32 = {args.layers * args.dim**2 * 4 / 2**30:.2f} GiB")
  print(f"| config | library | GB/s | best s | peak mem / input | jquant / qwix |\n|---|---|---|---|---|---|")
  for cfg in ("int8_channel", "int4_g128"):
    res = {}
    for _ in range(args.rounds):          # alternate libraries so machine noise hits both alike; keep the best
      for lib in libs:
        r = run_child(lib, cfg, args)
        if lib not in res or r.get("gbps", 0) > res[lib].get("gbps", 0):
          res[lib] = r
    for lib in libs:
      r = res[lib]
      if "error" in r:
        print(f"| {cfg} | {lib} | error: {r['error']} | | | |")
        continue
      ratio = ""
      if lib == "jquant" and "gbps" in res.get(libs[1], {}):
        ratio = f"{r['gbps'] / res[libs[1]]['gbps']:.2f}x"
      print(f"| {cfg} | {lib} | {r['gbps']:.2f} | {r['best_s']:.3f} | {r['peak_over_input']:.2f} | {ratio} |")


if __name__ == "__main__":
  main()
