"""SmolLM2 Hamlet perplexity of microscaling formats, data-free (RTN): weight-only, W8A8 MXFP8, W4A4 MXFP4 / NVFP4,
and what MXFP8 weight-only loses and where (the element format, the power-of-two E8M0 scale, the embedding).

    PYTHONPATH=. .venv/bin/python benchmarks/mx_formats.py [--configs NAME,...]

Rows (weights of every block linear; the token embedding / tied head int8 per row unless the name ends in
``-embfloat``): ``mxfp8`` (OCP: X = 2^(floor(log2 amax) - 8), saturating), ``mxfp8-ceil`` (E8M0 scale rounded up,
X = 2^ceil(log2(amax / 448)): never saturates), ``fp8g32`` (E4M3 with a float32 scale amax / 448 per 32),
``fp8ch`` (E4M3, float32 scale per output channel), ``int8ch``, ``mxfp4``, ``nvfp4``, each optionally with
``+a`` (activations in the same format as the weights, per block, dynamic: W8A8 / W4A4; int8ch+a: per-token int8).
"""

import argparse
import time

import jax
import jax.numpy as jnp

import jquant as jq
from jquant import eval as jeval
from jquant import ptq
from jquant.cli import common
from jquant.solvers.rtn import rtn

DEFAULT = "int8ch,mxfp8,mxfp8-embfloat,mxfp8-ceil,fp8g32,fp8ch,mxfp8+a,int8ch+a,mxfp4+a,nvfp4+a"
_F8 = lambda gran: jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=gran)


def _ceil_e8m0(w):
  """E4M3 codes with the E8M0 scale 2^ceil(log2(amax / 448)) per 32 inputs (a static power-of-two scale)."""
  spec = _F8(jq.PerGroup(axis=0, size=32))
  amax = jnp.max(jnp.abs(w.reshape(-1, 32, w.shape[1])), axis=1)
  scale = jnp.exp2(jnp.ceil(jnp.log2(jnp.maximum(amax, 1e-30) / 448.0)))
  return jq.quantize(w, spec, scale=scale)


def weight_fn(name: str):
  """kernel (in, out) -> QArray for a row name (without suffixes)."""
  mx = {"mxfp8": jq.MXFP8_E4M3, "mxfp4": jq.MXFP4, "nvfp4": jq.NVFP4}
  if name in mx:
    return lambda w: rtn(w, jq.QuantSpec(qtype=mx[name], granularity=jq.PerGroup(axis=0, size=mx[name].block_size)))
  return {"mxfp8-ceil": _ceil_e8m0, "fp8g32": lambda w: rtn(w, _F8(jq.PerGroup(axis=0, size=32))),
          "fp8ch": lambda w: rtn(w, _F8(jq.PerChannel(axis=-1))),
          "int8ch": lambda w: rtn(w, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)))}[name]


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default=DEFAULT)
  ap.add_argument("--windows", type=int, default=8)
  args = ap.parse_args()
  _, params = common.load_model("smollm2")
  print("| weights | activations | embedding | Hamlet ppl | s |\n|---|---|---|---|---|", flush=True)
  for cfg in args.configs.split(","):
    t0 = time.perf_counter()
    acts = cfg.endswith("+a")
    base = cfg[:-2] if acts else cfg
    emb = "float" if base.endswith("-embfloat") else "int8"
    wname = base.removesuffix("-embfloat")
    matmul = None
    if acts:
      fmt = wname.split("-")[0]
      matmul = ptq.ActQuant(ptq.RTN(jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))),
                            act_format="int" if fmt == "int8ch" else fmt).matmul
    model, _ = common.load_model("smollm2", matmul=matmul)
    q = weight_fn(wname)
    qparams = jax.tree_util.tree_map_with_path(
        lambda p, x: q(x) if "kernel" in jax.tree_util.keystr(p) and x.ndim == 2 else x, params)
    qparams = common.quantize_embedding("smollm2", qparams, params, emb)
    ppl = jeval.perplexity(model, qparams, windows=args.windows).ppl
    act = (("int8 per token" if wname == "int8ch" else f"{wname} per block") if acts else "float")
    print(f"| {wname} | {act} | {emb} | {ppl:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
