"""Quantize your own Flax NNX model with GPTQ and run it quantized under jit.

The model below is a small Llama-style decoder written in plain Flax NNX (it knows nothing of jquant): attention
heads as ``nnx.LinearGeneral``, the value projection as an ``nnx.Einsum``, the output projection contracting
(heads, head_dim), a SwiGLU MLP of ``nnx.Linear``, the layers in an ``nnx.List``. ``jq.ptq.quantize_model`` finds
the linears (``layers/0/attn/q``, ...), the blocks (``layers/0..N``) and the linear groups (q/k/v, gate/up) by
interception, and returns the quantized params as an ``nnx.State``; ``jq.ptq.runtime_model`` runs the unmodified
model with them (QArray kernels through ``jq.qdot``), under ``jax.jit``.

    python examples/ptq_nnx.py                    # 4-bit groups of 32, RTN vs GPTQ (act-order)
    python examples/ptq_nnx.py --bits 8 --layers 2

The weights are random (no download), so the numbers only compare methods: the relative error of the logits
against the float model on held-out tokens.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jquant as jq


# ----------------------------------------------------------------------------------------------------------------
# A user's model (plain Flax NNX).
class Attention(nnx.Module):
  def __init__(self, d, heads, rngs):
    hd = d // heads
    self.q = nnx.LinearGeneral(d, (heads, hd), use_bias=False, rngs=rngs)
    self.k = nnx.LinearGeneral(d, (heads, hd), use_bias=False, rngs=rngs)
    self.v = nnx.Einsum("btd,dnh->btnh", (d, heads, hd), rngs=rngs)
    self.o = nnx.LinearGeneral((heads, hd), d, axis=(-2, -1), use_bias=False, rngs=rngs)

  def __call__(self, x, mask):
    q, k, v = self.q(x), self.k(x), self.v(x)
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    return self.o(jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(logits + mask, axis=-1), v))


class Layer(nnx.Module):
  def __init__(self, d, heads, rngs):
    self.attn_norm = nnx.RMSNorm(d, rngs=rngs)
    self.attn = Attention(d, heads, rngs)
    self.mlp_norm = nnx.RMSNorm(d, rngs=rngs)
    self.gate = nnx.Linear(d, 4 * d, use_bias=False, rngs=rngs)
    self.up = nnx.Linear(d, 4 * d, use_bias=False, rngs=rngs)
    self.down = nnx.Linear(4 * d, d, use_bias=False, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn(self.attn_norm(x), mask)
    h = self.mlp_norm(x)
    return x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))


class TinyLM(nnx.Module):
  def __init__(self, vocab, d, heads, layers, rngs):
    self.embed = nnx.Embed(vocab, d, rngs=rngs)
    self.layers = nnx.List([Layer(d, heads, rngs) for _ in range(layers)])
    self.norm = nnx.RMSNorm(d, rngs=rngs)
    self.head = nnx.Linear(d, vocab, use_bias=False, rngs=rngs)

  def __call__(self, ids):
    t = ids.shape[1]
    mask = jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, -1e9)
    x = self.embed(ids)
    for layer in self.layers:
      x = layer(x, mask)
    return self.head(self.norm(x))


# ----------------------------------------------------------------------------------------------------------------
def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--bits", type=int, choices=(4, 8), default=4)
  ap.add_argument("--group-size", type=int, default=32)
  ap.add_argument("--calib", type=int, default=16, help="calibration batches of 8 x 32 tokens")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  vocab, heads, seq = 256, 4, 32
  model = TinyLM(vocab, args.dim, heads, args.layers, nnx.Rngs(args.seed))
  params = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(args.seed)
  tokens = lambda: jnp.asarray(rng.integers(0, vocab, (8, seq)), jnp.int32)
  calib = [tokens() for _ in range(args.calib)]
  held_out = tokens()
  y_float = jax.jit(lambda x: model(x))(held_out)

  qtype = jq.UINT4 if args.bits == 4 else jq.UINT8
  spec = jq.QuantSpec(qtype=qtype, granularity=jq.PerGroup(axis=0, size=args.group_size), symmetric=False)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  for method in (jq.ptq.RTN(spec), jq.ptq.GPTQ(spec, act_order=True)):
    t0 = time.perf_counter()
    qstate, report = jq.ptq.quantize_model(model, params, calib, method, progress=False)
    seconds = time.perf_counter() - t0
    run = jax.jit(jq.ptq.runtime_model(model, method).apply)          # the unmodified model, QArray kernels
    y_q = run(qstate, held_out)
    # dequantize_params gives float params the unmodified model runs (nnx.merge / nnx.update)
    y_deq = nnx.merge(graphdef, jq.dequantize_params(qstate), rest)(held_out)
    print(f"{method.name:5s} {len(report.layers)} linears in {seconds:.1f}s  mean layer SQNR "
          f"{report.mean_sqnr_db():.1f} dB  logits rel. error vs float {rel_err(y_q, y_float):.4f}  "
          f"(runtime vs dequantized model {rel_err(y_q, y_deq):.1e})  {report.bytes_before / 1e6:.2f} MB -> "
          f"{report.bytes_after / 1e6:.2f} MB")
  print(f"linears: {', '.join(e.path for e in report.layers[:7])}, ...")


if __name__ == "__main__":
  main()
