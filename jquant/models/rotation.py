"""QuaRot-style Hadamard rotations of a Llama-architecture model: the same float function, weights without outliers.

    rmodel, rparams = rotate(model, params, seed=0)         # rmodel.apply(rparams, ids) == model.apply(params, ids)
    qparams, report = jq.ptq.quantize_model(rmodel, rparams, batches, jq.ptq.GPTQ(spec))   # or RTN, ...

What is rotated (R1, R2 offline in float64; R4 online):

* Every RMSNorm's scale is folded into the linears it feeds (q/k/v, gate/up, the LM head) and set to 1; the
  embedding is untied from the LM head (the head becomes a separate ``lm_head/kernel``).
* R1 = diag(random signs) H_hidden on the residual stream: embedding ``E R1``; the linears that read the
  residual (q, k, v, gate, up, lm_head) ``R1^T W``; those that write it (o_proj, down_proj) ``W R1`` (and biases).
  RMSNorm without scale commutes with an orthogonal R1, so the function is unchanged.
* R2 = diag(random signs) H_head_dim per attention head on the v_proj outputs and the o_proj inputs.
* R4 (``online=True``): the plain Hadamard transform of the down_proj input is computed at run time
  (``LlamaConfig.rotate_down``, `jquant.ops.hadamard.hadamard_transform`) and ``H^T`` folded into down_proj; it
  matters when activations are quantized (W4A8 / W4A4) and helps the down_proj weight grid.

R3 (online q/k rotation for a quantized KV cache) is not implemented; the cached runtime refuses rotated models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.models.bert import BertConfig
from jquant.models.llama import LlamaConfig
from jquant.models.rotation_bert import rotate_bert, rotated_bert
from jquant.ops.hadamard import hadamard_matrix, random_signs
from jquant.ops.hadamard import supported as hadamard_supported

__all__ = ["rotate", "rotated_model"]

PyTree = Any


def _check_model(model) -> LlamaConfig | BertConfig:
  cfg = getattr(model, "config", None)
  if not isinstance(cfg, (LlamaConfig, BertConfig)):
    raise TypeError(f"rotate: expected a Llama-architecture model with a LlamaConfig .config (e.g. "
                    f"jquant.models.SmolLM2) or a BERT encoder with a BertConfig (MiniLM), got "
                    f"{type(model).__name__}.")
  return cfg


def rotated_model(model, online: bool = True):
  """The model that runs rotated params: same class, untied head, ``rotate_down=online``; for loading a rotated
  checkpoint whose params were produced by `rotate`. BERT encoders: ``rotate_inputs=True`` (`rotation_bert`)."""
  cfg = _check_model(model)
  if isinstance(cfg, BertConfig):
    _bert_online(online)
    return rotated_bert(model)
  new = dataclasses.replace(cfg, tie_embeddings=False, rotate_down=bool(online))
  return type(model)(new, matmul=getattr(model, "matmul", None), tokenizer=getattr(model, "tokenizer", None))


def rotate(model, params: PyTree, seed: int = 0, *, online: bool = True) -> tuple[Any, PyTree]:
  """Rotates a Llama-architecture model's float params (module docstring), or a BERT encoder's
  (`jquant.models.rotation_bert`: online input rotations only, plain Hadamard: ``seed`` is not used there).

  Args:
    model: a ``jquant.models.SmolLM2`` (or any model with a `LlamaConfig` ``.config`` rebuilt as
      ``type(model)(config, matmul=..., tokenizer=...)``), not already rotated.
    params: its float ``params`` dict.
    seed: seed of R1's and R2's random signs.
    online: also fold R4 into down_proj and compute its Hadamard transform at run time.

  Returns:
    (rotated model, rotated float32 params) computing the same function.
  """
  cfg = _check_model(model)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise TypeError(f"rotate: seed must be an int, got {seed!r}.")
  if isinstance(cfg, BertConfig):
    _bert_online(online)
    _check_float(params)
    return rotate_bert(model, params)
  if cfg.rotate_down:
    raise ValueError("rotate: the model is already rotated (config.rotate_down is set); rotate the original params.")
  for n, what in ((cfg.hidden, "hidden"), (cfg.head_dim, "head_dim"), (cfg.intermediate, "intermediate")):
    if (what != "intermediate" or online) and not hadamard_supported(n):
      raise ValueError(f"rotate: {what} = {n} has no Hadamard matrix (supported: K x 2^m with a Paley K, see "
                       "jquant.ops.hadamard).")
  _check_float(params)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  r1 = hadamard_matrix(cfg.hidden, random_signs(cfg.hidden, seed))
  r2 = hadamard_matrix(cfg.head_dim, random_signs(cfg.head_dim, seed + 1))
  r4 = hadamard_matrix(cfg.intermediate) if online else None
  out = {k: v for k, v in p.items() if not k.startswith("layers_")}
  emb = p["embed_tokens"]["embedding"]
  head = emb.T if cfg.tie_embeddings else p["lm_head"]["kernel"]
  out["lm_head"] = {"kernel": _read(head, p["norm"]["scale"], r1)}
  out["embed_tokens"] = {"embedding": emb @ r1}
  out["norm"] = {"scale": np.ones(cfg.hidden)}
  for i in range(cfg.num_layers):
    out[f"layers_{i}"] = _rotate_block(cfg, p[f"layers_{i}"], r1, r2, r4)
  return rotated_model(model, online), jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)


def _check_float(params) -> None:
  leaves = jax.tree.leaves(params, is_leaf=lambda a: isinstance(a, QArray))
  if any(isinstance(a, QArray) for a in leaves):
    raise ValueError("rotate: params hold quantized (QArray) leaves; rotate the float params, then quantize.")


def _bert_online(online) -> None:
  if not online:
    raise ValueError("rotate: a post-LayerNorm BERT encoder has only online (run-time) rotations (the LayerNorm "
                     "does not commute with an offline residual rotation); use online=True.")


def _read(w: np.ndarray, gamma: np.ndarray, r1: np.ndarray) -> np.ndarray:
  """A linear that reads the normed residual: ``R1^T diag(gamma) W``."""
  return r1.T @ (gamma[:, None] * w)


def _rotate_block(cfg: LlamaConfig, b: dict, r1, r2, r4) -> dict:
  b = jax.tree.map(lambda a: a, b)      # copies the dicts (leaves are fresh float64 arrays)
  a, m = b["self_attn"], b["mlp"]
  hd, kv, nh = cfg.head_dim, cfg.num_kv_heads, cfg.num_heads
  g1 = b["input_layernorm"]["scale"]
  for name in ("q_proj", "k_proj", "v_proj"):
    a[name]["kernel"] = _read(a[name]["kernel"], g1, r1)
  v = a["v_proj"]
  v["kernel"] = (v["kernel"].reshape(cfg.hidden, kv, hd) @ r2).reshape(cfg.hidden, kv * hd)
  if "bias" in v:
    v["bias"] = (v["bias"].reshape(kv, hd) @ r2).reshape(-1)
  o = a["o_proj"]
  o["kernel"] = np.einsum("ji,hjn->hin", r2, o["kernel"].reshape(nh, hd, cfg.hidden)).reshape(nh * hd, -1) @ r1
  if "bias" in o:
    o["bias"] = o["bias"] @ r1
  g2 = b["post_attention_layernorm"]["scale"]
  for name in ("gate_proj", "up_proj"):
    m[name]["kernel"] = _read(m[name]["kernel"], g2, r1)
  down = m["down_proj"]["kernel"]
  m["down_proj"]["kernel"] = (down if r4 is None else r4.T @ down) @ r1
  b["input_layernorm"]["scale"] = np.ones_like(g1)
  b["post_attention_layernorm"]["scale"] = np.ones_like(g2)
  return b
