"""Quantization-aware training of a small byte-level transformer LM on Shakespeare.

1. Train a float LM (float32 master weights, bfloat16 or float16 compute, dynamic loss scaling) on the works
   other than Hamlet.
2. PTQ: round-to-nearest int4 weights (+ dynamic int8 activations) of that model.
3. QAT: continue training the float model with the same quantization simulated (fake quant, clipped STE),
   then `jq.qat.convert` it to integer weights.
Prints the held-out Hamlet loss (nats per byte) of each: float, RTN and QAT at the same spec.

    python examples/train_qat_lm.py --steps 400 --qat-steps 150          # a few minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jquant as jq
import jquant.flax.linen as jql
from jquant import mixed_precision as mp
from jquant import qat


class Block(nn.Module):
  d_model: int
  n_heads: int
  dense: nn.Module = nn.Dense    # the layer class for the projections (QLoRA swaps it)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    hd = d // self.n_heads
    h = nn.RMSNorm(dtype=self.dtype, name="norm1")(x)
    q, k, v = (self.dense(d, dtype=self.dtype, name=n)(h).reshape(b, t, self.n_heads, hd) for n in ("q", "k", "v"))
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd).astype(self.dtype)
    att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, jnp.finfo(self.dtype).min)
    att = jax.nn.softmax(att.astype(jnp.float32), axis=-1).astype(self.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
    x = x + self.dense(d, dtype=self.dtype, name="o")(o)
    h = nn.RMSNorm(dtype=self.dtype, name="norm2")(x)
    h = jax.nn.gelu(self.dense(4 * d, dtype=self.dtype, name="up")(h))
    return x + self.dense(d, dtype=self.dtype, name="down")(h)


class ByteLM(nn.Module):
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  seq_len: int = 64
  dense: nn.Module = nn.Dense
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(256, self.d_model, name="embed")(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.d_model))[: tokens.shape[1]]
    x = x.astype(self.dtype)
    for i in range(self.n_layers):
      x = Block(self.d_model, self.n_heads, self.dense, self.dtype, name=f"block_{i}")(x)
    x = nn.RMSNorm(dtype=self.dtype, name="norm_f")(x)
    return nn.Dense(256, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def load_texts(text_path: str | None) -> tuple[bytes, bytes]:
  """(train bytes, held-out Hamlet bytes)."""
  if text_path:
    data = Path(text_path).read_bytes()
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:]
  from jquant import assets
  train = "\n".join(assets.calibration_texts()).encode("utf-8", "replace")
  return train, assets.shakespeare_text("hamlet").encode("utf-8", "replace")


def batches(data: np.ndarray, batch: int, seq: int, seed: int):
  rng = np.random.default_rng(seed)
  while True:
    idx = rng.integers(0, len(data) - seq - 1, batch)
    yield np.stack([data[i:i + seq + 1] for i in idx])


def eval_windows(data: np.ndarray, seq: int, n: int) -> np.ndarray:
  starts = np.linspace(0, len(data) - seq - 2, n).astype(int)
  return np.stack([data[i:i + seq + 1] for i in starts])


def xent(logits, tokens):
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()


def make_train_step(apply_fn, tx, policy: mp.Policy):
  @jax.jit
  def step(params, opt_state, chunk):
    scale = mp.current_loss_scale(opt_state)

    def loss_fn(p):
      # float32 master params; the layers cast them to the compute dtype (their `dtype`).
      logits = apply_fn({"params": p}, chunk[:, :-1])
      return policy.cast_to_output(xent(logits, chunk[:, 1:]))

    loss, grads = jax.value_and_grad(lambda p: loss_fn(p) * scale)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss / scale

  return step


def train(apply_fn, params, data, steps, args, policy, seed, label):
  tx = mp.loss_scaled(optax.adamw(optax.cosine_decay_schedule(args.lr, steps), weight_decay=0.01),
                      mp.DynamicLossScale(scale=2.0**15, period=200))
  opt_state = tx.init(params)
  step = make_train_step(apply_fn, tx, policy)
  it = batches(data, args.batch, args.seq_len, seed)
  t0, skipped = time.perf_counter(), 0
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, next(it))
    skipped += int(not _last_finite(opt_state))
    if (i + 1) % max(1, steps // 5) == 0:
      print(f"  [{label}] step {i + 1}/{steps} loss {float(loss):.4f} loss_scale "
            f"{float(mp.current_loss_scale(opt_state)):.0f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
  print(f"  [{label}] skipped (non-finite) steps: {skipped}", file=sys.stderr)
  return params


def _last_finite(opt_state) -> bool:
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, mp.LossScaleState))
           if isinstance(s, mp.LossScaleState)]
  return bool(found[0].grads_finite)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--text", help="train on this file (90/10 split) instead of the Shakespeare assets")
  ap.add_argument("--steps", type=int, default=400, help="float training steps")
  ap.add_argument("--qat-steps", type=int, default=150, help="QAT fine-tuning steps")
  ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
  ap.add_argument("--group-size", type=int, default=32, help="0: one scale per output channel")
  ap.add_argument("--act-bits", type=int, default=8, choices=(0, 8), help="0: weight-only")
  ap.add_argument("--compute-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  ap.add_argument("--d-model", type=int, default=128)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--eval-windows", type=int, default=256)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  policy = mp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.dtype(args.compute_dtype), output_dtype=jnp.float32)
  train_bytes, eval_bytes = load_texts(args.text)
  train_data = np.frombuffer(train_bytes, np.uint8).astype(np.int32)
  eval_data = eval_windows(np.frombuffer(eval_bytes, np.uint8).astype(np.int32), args.seq_len, args.eval_windows)
  print(f"train {len(train_data):,} bytes, eval {eval_data.shape[0]} windows of {args.seq_len} (Hamlet held out); "
        f"compute {policy.compute_dtype}", file=sys.stderr)

  model = ByteLM(args.d_model, args.layers, 4, args.seq_len, dtype=policy.compute_dtype)
  qtype = jq.INT4 if args.bits == 4 else jq.INT8
  gran = jq.PerGroup(axis=0, size=args.group_size) if args.group_size else jq.PerChannel(axis=-1)
  w_spec = jq.QuantSpec(qtype=qtype, granularity=gran)
  a_spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()) if args.act_bits else None
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r"block_\d+/(q|k|v|o|up|down)/kernel", w_spec)],
                       skip=[r"embed.*", r"head.*"])
  qmodel = jql.fake_quant_model(model, cfg, act_spec=a_spec)

  evaluate = jax.jit(lambda apply, p: xent(apply({"params": p}, eval_data[:, :-1]), eval_data[:, 1:]),
                     static_argnums=0)
  params = model.init(jax.random.key(args.seed), eval_data[:1, :-1])["params"]

  t0 = time.perf_counter()
  fp = train(model.apply, params, train_data, args.steps, args, policy, args.seed, "float")
  fp_more = train(model.apply, fp, train_data, args.qat_steps, args, policy, args.seed + 1, "float, continued")
  qat_params = train(qmodel.apply, fp, train_data, args.qat_steps, args, policy, args.seed + 1, "QAT")
  rtn_int = qat.convert(fp_more, cfg)            # PTQ: round-to-nearest of the float model, same spec
  qat_int = qat.convert(qat_params, cfg)         # QAT: integer weights of the fake-quant-trained model
  n_quant = sum(isinstance(x, jq.QArray) for x in jax.tree.leaves(qat_int, is_leaf=lambda x: isinstance(x, jq.QArray)))

  spec_name = f"W{args.bits} " + (f"g{args.group_size}" if args.group_size else "per-channel") + (
      " A8-token" if a_spec else "")
  print(f"held-out Hamlet loss (nats/byte), {args.steps}+{args.qat_steps} steps, {n_quant} quantized kernels, "
        f"{time.perf_counter() - t0:.0f}s:")
  print(f"fp_loss {float(evaluate(model.apply, fp_more)):.4f}")
  print(f"rtn_loss {float(evaluate(qmodel.apply, rtn_int)):.4f}   ({spec_name}, PTQ round-to-nearest)")
  print(f"qat_loss {float(evaluate(qmodel.apply, qat_int)):.4f}   ({spec_name}, QAT + convert)")
  print(f"qat_fake_quant_loss {float(evaluate(qmodel.apply, qat_params)):.4f}   (QAT before convert; must equal)")


if __name__ == "__main__":
  main()
