"""Train-step time with fake quantization vs without, side by side in one run.

A transformer-sized MLP stack (Linen), one jitted step = forward + backward + AdamW update, float32. Variants:
``float`` (nn.Dense), ``w8`` (int8 per-channel weights), ``w4a8`` (int4 groups of 128 + int8 per-token
activations), ``w4-lsq`` (int4 learned step sizes). The variants are timed interleaved (round-robin) so that
machine noise hits all of them alike; the median step time and its ratio to ``float`` are printed.

    python benchmarks/qat_overhead.py [--tokens 512] [--width 512] [--layers 4] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jquant as jq
from jquant.flax.linen import QuantDense

W8 = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
W4_G128 = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=128))
A8_TOKEN = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken())


class Mlp(nn.Module):
  width: int
  layers: int
  quant: dict

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      if self.quant is None:
        h = nn.Dense(4 * self.width, name=f"up_{i}")(x)
        x = x + nn.Dense(self.width, name=f"down_{i}")(jax.nn.gelu(h))
      else:
        h = QuantDense(4 * self.width, name=f"up_{i}", **self.quant)(x)
        x = x + QuantDense(self.width, name=f"down_{i}", **self.quant)(jax.nn.gelu(h))
    return x


VARIANTS = {
    "float": None,
    "w8": dict(weight_spec=W8),
    "w4a8": dict(weight_spec=W4_G128, act_spec=A8_TOKEN),
    "w4-lsq": dict(weight_spec=W4_G128, weight_mode="lsq"),
}


def make_step(model, tx):
  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x) - y)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tokens", type=int, default=512)
  ap.add_argument("--width", type=int, default=512)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--steps-per-round", type=int, default=3)
  args = ap.parse_args(argv)

  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (args.tokens, args.width), jnp.float32)
  y = jax.random.normal(ky, (args.tokens, args.width), jnp.float32)
  tx = optax.adamw(1e-3)
  runs = {}
  for name, quant in VARIANTS.items():
    model = Mlp(args.width, args.layers, quant)
    params = model.init(jax.random.key(1), x)["params"]
    state = [params, tx.init(params)]
    step = make_step(model, tx)
    t0 = time.perf_counter()
    jax.block_until_ready(step(*state, x, y))
    runs[name] = (step, state, [], time.perf_counter() - t0)
  for _ in range(args.rounds):
    for name, (step, state, times, _) in runs.items():
      t0 = time.perf_counter()
      for _ in range(args.steps_per_round):
        state[0], state[1], loss = step(state[0], state[1], x, y)
      jax.block_until_ready(loss)
      times.append((time.perf_counter() - t0) / args.steps_per_round)

  flops = 6 * args.tokens * args.layers * 2 * 4 * args.width * args.width
  base = statistics.median(runs["float"][2])
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), tokens {args.tokens}, width "
        f"{args.width}, layers {args.layers}, ~{flops / 1e9:.1f} GFLOP per step")
  print(f"{'variant':8s} {'median ms':>10s} {'ratio':>6s} {'compile s':>10s}")
  for name, (_, _, times, compile_s) in runs.items():
    med = statistics.median(times)
    print(f"{name:8s} {med * 1e3:10.1f} {med / base:6.2f} {compile_s:10.1f}")


if __name__ == "__main__":
  main()
