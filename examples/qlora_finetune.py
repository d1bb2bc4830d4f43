"""QLoRA fine-tuning of a small byte-level LM: frozen NF4 (double-quantized) base + bfloat16 LoRA adapters.

1. Pre-train a float byte-level LM on the Shakespeare works other than Hamlet (the model of
   examples/train_qat_lm.py).
2. Swap its attention/MLP projections for `QLoRADense` (NF4 base, groups of 64, int8-quantized scales; rank-r
   adapters) and load the trained weights into the frozen base (`load_qlora_base`).
3. Train only the adapters on the first 90% of Hamlet; evaluate on the last 10%.
Prints the held-out loss (nats/byte) of the float model, of the NF4 base alone and after QLoRA fine-tuning.

    python examples/qlora_finetune.py --pretrain-steps 400 --steps 200
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

import jquant as jq
from jquant import mixed_precision as mp
from jquant.flax.qlora import NF4_DQ_G64, QLoRADense, load_qlora_base

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_qat_lm import ByteLM, batches, eval_windows, load_texts, train, xent  # noqa: E402


def split_adapters(params):
  flat = traverse_util.flatten_dict(params)
  lora = {k: v for k, v in flat.items() if k[-1].startswith("lora_")}
  frozen = {k: v for k, v in flat.items() if not k[-1].startswith("lora_")}
  return lora, frozen


def merge(lora, frozen):
  return traverse_util.unflatten_dict({**frozen, **lora})


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--text", help="pre-train on this file instead of the Shakespeare assets")
  ap.add_argument("--pretrain-steps", type=int, default=400)
  ap.add_argument("--steps", type=int, default=200, help="QLoRA fine-tuning steps")
  ap.add_argument("--rank", type=int, default=8)
  ap.add_argument("--alpha", type=float, default=16.0)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--compute-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  ap.add_argument("--d-model", type=int, default=128)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--eval-windows", type=int, default=256)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  compute = jnp.dtype(args.compute_dtype)
  policy = mp.Policy(param_dtype=jnp.float32, compute_dtype=compute, output_dtype=jnp.float32)
  pre_bytes, hamlet = load_texts(args.text)
  pre_data = np.frombuffer(pre_bytes, np.uint8).astype(np.int32)
  hamlet = np.frombuffer(hamlet, np.uint8).astype(np.int32)
  cut = int(len(hamlet) * 0.9)
  ft_data, held_out = hamlet[:cut], eval_windows(hamlet[cut:], args.seq_len, args.eval_windows)

  model = ByteLM(args.d_model, args.layers, 4, args.seq_len, dtype=compute)
  adapter_dtype = jnp.float32 if compute == jnp.float16 else jnp.bfloat16
  qlora_dense = functools.partial(QLoRADense, rank=args.rank, alpha=args.alpha, base_spec=NF4_DQ_G64,
                                  param_dtype=adapter_dtype)
  qmodel = ByteLM(args.d_model, args.layers, 4, args.seq_len, dense=qlora_dense, dtype=compute)
  evaluate = jax.jit(lambda apply, v: xent(apply(v, held_out[:, :-1]), held_out[:, 1:]), static_argnums=0)

  t0 = time.perf_counter()
  params = model.init(jax.random.key(args.seed), held_out[:1, :-1])["params"]
  fp = train(model.apply, params, pre_data, args.pretrain_steps, args, policy, args.seed, "pre-train (float)")
  variables = load_qlora_base(qmodel.init(jax.random.key(args.seed + 1), held_out[:1, :-1]), fp)
  base = variables["qlora_base"]
  lora, frozen = split_adapters(variables["params"])
  n_base = sum(x.nbytes for x in jax.tree.leaves(base, is_leaf=lambda x: isinstance(x, jq.QArray))
               if isinstance(x, jq.QArray))
  n_lora = sum(x.size for x in lora.values())
  print(f"NF4 base: {n_base / 1024:.0f} KiB; trainable adapter params: {n_lora:,} "
        f"(rank {args.rank}, {jnp.dtype(adapter_dtype).name})", file=sys.stderr)

  tx = mp.loss_scaled(optax.adamw(optax.cosine_decay_schedule(args.lr, args.steps), weight_decay=0.0),
                      mp.DynamicLossScale(scale=2.0**15, period=200))
  opt_state = tx.init(lora)

  @jax.jit
  def step(lora, opt_state, chunk):
    scale = mp.current_loss_scale(opt_state)

    def loss_fn(lora):      # gradients w.r.t. the adapters only; base and other weights are constants
      logits = qmodel.apply({"params": merge(lora, frozen), "qlora_base": base}, chunk[:, :-1])
      return policy.cast_to_output(xent(logits, chunk[:, 1:])) * scale

    loss, grads = jax.value_and_grad(loss_fn)(lora)
    updates, opt_state = tx.update(grads, opt_state, lora)
    return optax.apply_updates(lora, updates), opt_state, loss / scale

  fp_loss = float(evaluate(model.apply, {"params": fp}))
  base_loss = float(evaluate(qmodel.apply, {"params": merge(lora, frozen), "qlora_base": base}))
  it = batches(ft_data, args.batch, args.seq_len, args.seed + 2)
  for i in range(args.steps):
    lora, opt_state, loss = step(lora, opt_state, next(it))
    if (i + 1) % max(1, args.steps // 5) == 0:
      print(f"  [QLoRA] step {i + 1}/{args.steps} loss {float(loss):.4f}", file=sys.stderr)
  unchanged = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(base),
                                                              jax.tree.leaves(variables["qlora_base"])))
  qlora_loss = float(evaluate(qmodel.apply, {"params": merge(lora, frozen), "qlora_base": base}))
  print(f"held-out Hamlet loss (nats/byte), last 10% of Hamlet, {time.perf_counter() - t0:.0f}s:")
  print(f"fp_loss {fp_loss:.4f}   (float model, pre-trained without Hamlet)")
  print(f"nf4_base_loss {base_loss:.4f}   (NF4 double-quantized base, adapters at init)")
  print(f"qlora_loss {qlora_loss:.4f}   (after {args.steps} adapter steps on Hamlet's first 90%; base unchanged: "
        f"{unchanged})")


if __name__ == "__main__":
  main()
