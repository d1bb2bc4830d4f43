"""Quantize your own Flax model with GPTQ and run it quantized under jit.

The model below is written the way a Flax user writes a Llama: attention heads as ``nn.DenseGeneral``, the output
projection contracting (heads, head_dim), the MLP as ``nn.Dense``, optionally the layers under ``nn.scan``. It knows
nothing of jquant. We load SmolLM2-135M's weights into it (a real model we did not write), quantize it with
``jq.ptq.quantize_model`` (GPTQ act-order, 4-bit groups of 64; linears, blocks and groups are found by
interception), and evaluate Hamlet perplexity with ``jq.ptq.runtime_model`` (QArray kernels through ``jq.qdot``).

    python examples/ptq_your_model.py                 # unrolled layers
    python examples/ptq_your_model.py --scan          # the same model with nn.scan-ned layers
    python examples/ptq_your_model.py --compare       # also jquant's own SmolLM2 (BlockwiseModel) path, same settings
    python examples/ptq_your_model.py --calib 4 --eval-windows 2 --layers 4   # a quick run
"""

from __future__ import annotations

import argparse
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jquant as jq

HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------------
# A user's model (plain Flax Linen). RoPE rotates adjacent pairs, the layout of SmolLM2's GGUF q/k weights.
def rope(x, positions, base):
  d = x.shape[-1]
  inv = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  ang = positions[:, :, None, None].astype(jnp.float32) * inv
  a, b = x[..., 0::2], x[..., 1::2]
  c, s = jnp.cos(ang), jnp.sin(ang)
  return jnp.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(x.shape)


class Attention(nn.Module):
  heads: int
  kv_heads: int
  head_dim: int
  rope_base: float

  @nn.compact
  def __call__(self, x, positions):
    q = nn.DenseGeneral((self.heads, self.head_dim), use_bias=False, precision=HI, name="q")(x)
    k = nn.DenseGeneral((self.kv_heads, self.head_dim), use_bias=False, precision=HI, name="k")(x)
    v = nn.DenseGeneral((self.kv_heads, self.head_dim), use_bias=False, precision=HI, name="v")(x)
    q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
    rep = self.heads // self.kv_heads
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    t = x.shape[1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HI) / math.sqrt(self.head_dim)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e30)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision=HI)
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=False, precision=HI, name="o")(out)


class DecoderLayer(nn.Module):
  cfg: dict

  @nn.compact
  def __call__(self, x, positions):
    c = self.cfg
    h = nn.RMSNorm(epsilon=c["eps"], name="attn_norm")(x)
    x = x + Attention(c["heads"], c["kv_heads"], c["head_dim"], c["rope_base"], name="attn")(h, positions)
    h = nn.RMSNorm(epsilon=c["eps"], name="mlp_norm")(x)
    gate = nn.Dense(c["ffn"], use_bias=False, precision=HI, name="gate")(h)
    up = nn.Dense(c["ffn"], use_bias=False, precision=HI, name="up")(h)
    return x + nn.Dense(x.shape[-1], use_bias=False, precision=HI, name="down")(jax.nn.silu(gate) * up)


class ScannedLayer(nn.Module):
  cfg: dict

  @nn.compact
  def __call__(self, x, positions):
    return DecoderLayer(self.cfg, name="layer")(x, positions), None


class MyLlama(nn.Module):
  cfg: dict
  scan: bool = False

  @nn.compact
  def __call__(self, ids):
    c = self.cfg
    embed = nn.Embed(c["vocab"], c["hidden"], name="embed")
    x = embed(ids)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    if self.scan:
      layers = nn.scan(ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=nn.broadcast, length=c["layers"])
      x, _ = layers(c, name="layers")(x, positions)
    else:
      for i in range(c["layers"]):
        x = DecoderLayer(c, name=f"layers_{i}")(x, positions)
    return embed.attend(nn.RMSNorm(epsilon=c["eps"], name="norm")(x))      # tied head


# ----------------------------------------------------------------------------------------------------------------
def smollm2_as_my_llama(num_layers: int | None = None, scan: bool = False):
  """SmolLM2-135M's weights in MyLlama's layout (what a user's own checkpoint converter would do)."""
  from jquant.models import load_smollm2  # pylint: disable=import-outside-toplevel
  ref, p = load_smollm2()
  rc = ref.config
  n = num_layers or rc.num_layers
  cfg = dict(vocab=rc.vocab_size, hidden=rc.hidden, ffn=rc.intermediate, layers=n, heads=rc.num_heads,
             kv_heads=rc.num_kv_heads, head_dim=rc.head_dim, rope_base=rc.rope_base, eps=rc.rms_eps)
  d, hd = rc.hidden, rc.head_dim

  def layer(i):
    lp = p[f"layers_{i}"]
    a, m = lp["self_attn"], lp["mlp"]
    return {"attn_norm": {"scale": lp["input_layernorm"]["scale"]},
            "mlp_norm": {"scale": lp["post_attention_layernorm"]["scale"]},
            "attn": {"q": {"kernel": a["q_proj"]["kernel"].reshape(d, rc.num_heads, hd)},
                     "k": {"kernel": a["k_proj"]["kernel"].reshape(d, rc.num_kv_heads, hd)},
                     "v": {"kernel": a["v_proj"]["kernel"].reshape(d, rc.num_kv_heads, hd)},
                     "o": {"kernel": a["o_proj"]["kernel"].reshape(rc.num_heads, hd, d)}},
            "gate": {"kernel": m["gate_proj"]["kernel"]}, "up": {"kernel": m["up_proj"]["kernel"]},
            "down": {"kernel": m["down_proj"]["kernel"]}}

  params = {"embed": {"embedding": p["embed_tokens"]["embedding"]}, "norm": {"scale": p["norm"]["scale"]}}
  if scan:
    params["layers"] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *[layer(i) for i in range(n)])}
  else:
    params.update({f"layers_{i}": layer(i) for i in range(n)})
  return MyLlama(cfg, scan=scan), params, ref, p


def hamlet_ppl(apply, variables, ref, windows: int, seq_len: int = 512, batch: int = 4) -> float:
  """Perplexity on the first ``windows`` 512-token windows of Hamlet (jquant's evaluation protocol)."""
  from jquant import assets  # pylint: disable=import-outside-toplevel
  from jquant.eval.perplexity import window_nll  # pylint: disable=import-outside-toplevel
  from jquant.eval.text import token_windows  # pylint: disable=import-outside-toplevel
  data = token_windows(ref.encode(assets.shakespeare_text("hamlet")), windows, seq_len)
  f = jax.jit(lambda v, ids: window_nll(apply(v, ids), ids))
  total = 0.0
  for s in range(0, windows, batch):
    chunk = data[s:s + batch]
    pad = batch - chunk.shape[0]
    ids = jnp.asarray(np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk)
    total += float(np.asarray(f(variables, ids), np.float64)[:chunk.shape[0]].sum())
  return math.exp(total / (windows * (seq_len - 1)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--scan", action="store_true", help="the nn.scan-ned variant of the model")
  ap.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens (other plays)")
  ap.add_argument("--eval-windows", type=int, default=8, help="Hamlet windows to evaluate")
  ap.add_argument("--layers", type=int, default=None, help="use only the first N layers (quick runs)")
  ap.add_argument("--compare", action="store_true", help="also run jquant's own SmolLM2 (BlockwiseModel) path")
  args = ap.parse_args(argv)

  model, params, ref, ref_params = smollm2_as_my_llama(args.layers, args.scan)
  from jquant.eval import lm_calibration_windows  # pylint: disable=import-outside-toplevel
  windows = lm_calibration_windows(ref, num_windows=args.calib)
  batches = [jnp.asarray(windows[i:i + 4]) for i in range(0, len(windows), 4)]
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=64), symmetric=False)
  method = jq.ptq.GPTQ(spec, act_order=True)

  results = {}
  results["float"] = hamlet_ppl(model.apply, {"params": params}, ref, args.eval_windows)
  t0 = time.perf_counter()
  qparams, report = jq.ptq.quantize_model(model, params, batches, method)
  t_generic = time.perf_counter() - t0
  run = jq.ptq.runtime_model(model, method)
  results["gptq (your model)"] = hamlet_ppl(run.apply, {"params": qparams}, ref, args.eval_windows)
  print(f"{len(report.layers)} linears quantized, {report.bytes_before / 2**20:.1f} -> "
        f"{report.bytes_after / 2**20:.1f} MiB, {t_generic:.1f} s")
  if args.compare:
    if args.layers is not None:
      raise SystemExit("--compare needs the full model (drop --layers)")
    t0 = time.perf_counter()
    q_ref, _ = jq.ptq.quantize_model(ref, ref_params, batches, method)
    t_ref = time.perf_counter() - t0
    results["gptq (jquant SmolLM2)"] = jq.eval.perplexity(ref, q_ref, windows=args.eval_windows).ppl
    print(f"time: your model {t_generic:.1f} s, BlockwiseModel path {t_ref:.1f} s ({t_generic / t_ref:.2f}x)")
  for k, v in results.items():
    print(f"ppl {k}: {v:.3f}")
  return results


if __name__ == "__main__":
  main()
