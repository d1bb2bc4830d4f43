"""Hadamard rotations of a post-LayerNorm BERT encoder (MiniLM): online input rotations of every encoder linear.

QuaRot's offline residual rotation (R1) needs a norm that commutes with an orthogonal matrix: RMSNorm without scale
does, LayerNorm does not (its mean subtraction and per-channel scale/bias act in the unrotated basis), and in a
post-LN encoder the LayerNorm output *is* the residual stream, so nothing can be folded across it. What stays exact
is rotating each linear's input: ``x W = (x H)(H^T W)``. The rotated model computes ``x H`` at run time
(``BertConfig.rotate_inputs``, `jquant.ops.hadamard.hadamard_transform`, O(n log n)) in front of q/k/v (one
transform of the shared input), the attention output, the intermediate and the output linears, and each kernel
holds ``H^T W`` (float64 here). Weight groups run along the input axis, so each group's outliers are spread over
the whole input width before quantization (incoherence processing, as R4 does for the Llama down_proj).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models.bert import BertConfig
from jquant.ops.hadamard import hadamard_matrix

__all__ = ["rotate_bert", "rotated_bert"]

_LINEARS = (("attention/query", "hidden"), ("attention/key", "hidden"), ("attention/value", "hidden"),
            ("attention/output", "hidden"), ("intermediate", "hidden"), ("output", "intermediate"))


def rotated_bert(model):
  """The encoder that runs rotated params (same class, ``rotate_inputs=True``)."""
  cfg: BertConfig = model.config
  return type(model)(dataclasses.replace(cfg, rotate_inputs=True), matmul=getattr(model, "matmul", None),
                     tokenizer=getattr(model, "tokenizer", None))


def rotate_bert(model, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  """(rotated encoder, params with every encoder kernel ``H^T W``); embeddings, norms and biases unchanged."""
  cfg: BertConfig = model.config
  if cfg.rotate_inputs:
    raise ValueError("rotate: the model is already rotated (config.rotate_inputs is set); rotate the original "
                     "params.")
  new = rotated_bert(model)      # checks that hidden and intermediate have Hadamard matrices
  h = {"hidden": hadamard_matrix(cfg.hidden), "intermediate": hadamard_matrix(cfg.intermediate)}
  out = dict(params)
  for i in range(cfg.num_layers):
    layer = jax.tree.map(lambda a: a, params[f"layer_{i}"])     # fresh dicts, shared leaves
    for path, size in _LINEARS:
      node = layer
      for key in path.split("/"):
        node = node[key]
      node["kernel"] = jnp.asarray(h[size].T @ np.asarray(node["kernel"], np.float64), jnp.float32)
    out[f"layer_{i}"] = layer
  return new, out
