"""all-MiniLM-L6-v2: BERT sentence encoder loaded from the shipped fp32 safetensors.

    model, params = load_minilm()
    emb = model.apply(params, model.encode_batch(["A sentence.", "Another one."]))   # (2, 384), unit norm

``MiniLM`` implements ``jquant.ptq.protocol.BlockwiseModel``. A batch is a dict with ``"input_ids"`` and
``"attention_mask"`` (B, T) int arrays (optional ``"token_type_ids"``), as ``encode_batch`` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models import bert
from jquant.models.blockwise import BlockwiseBase, PyTree, run_method
from jquant.ptq.scaling import ScalePlan, ScaleTarget
from jquant.models.layers import MatmulFn

__all__ = ["MiniLM", "load_minilm", "minilm_params_from_safetensors"]

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model

_LAYER_NAMES = {
    "attention.self.query": "attention/query",
    "attention.self.key": "attention/key",
    "attention.self.value": "attention/value",
    "attention.output.dense": "attention/output",
    "attention.output.LayerNorm": "attention_layernorm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_layernorm",
}
_LEAF = {"weight": "kernel", "bias": "bias"}
_LN_LEAF = {"weight": "scale", "bias": "bias"}


def _check_batch(batch: Any) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  if not isinstance(batch, dict) or "input_ids" not in batch or "attention_mask" not in batch:
    raise TypeError(f"MiniLM batch must be a dict with 'input_ids' and 'attention_mask' (B, T) arrays (as "
                    f"MiniLM.encode_batch returns), got {type(batch).__name__}"
                    f"{' with keys ' + str(sorted(batch)) if isinstance(batch, dict) else ''}.")
  ids, mask = batch["input_ids"], batch["attention_mask"]
  if ids.ndim != 2 or ids.shape != mask.shape:
    raise ValueError(f"MiniLM batch: input_ids {ids.shape} and attention_mask {mask.shape} must be equal (B, T).")
  return ids, mask, batch.get("token_type_ids")


class MiniLM(BlockwiseBase):
  """A BERT encoder with mean pooling as a BlockwiseModel.

  Args:
    config: architecture (default: all-MiniLM-L6-v2).
    matmul: optional hashable ``matmul(x, kernel)`` used by every Linear.
    tokenizer: optional ``tokenizers.Tokenizer`` (``load_minilm`` loads ``tokenizer.json``).
  """

  def __init__(self, config: bert.BertConfig = bert.BertConfig(), matmul: MatmulFn | None = None,
               tokenizer: Any = None):
    if not isinstance(config, bert.BertConfig):
      raise TypeError(f"MiniLM: config must be a BertConfig, got {type(config).__name__}.")
    self.config = config
    self.matmul = matmul
    self.tokenizer = tokenizer
    self.module = bert.BertEncoder(config, matmul)
    self._block = bert.BertBlock(config, matmul)
    self._prefix = "layer_"
    self._num_blocks = config.num_layers
    super().__init__()

  def init(self, rng: jax.Array, seq_len: int = 8) -> PyTree:
    """Random params (for tests and tiny configs)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return jax.jit(self.module.init)(rng, ids, jnp.ones_like(ids))["params"]

  def scale_plan(self, groups) -> ScalePlan | None:
    """AWQ / SmoothQuant fold targets (`jquant.ptq.scaling`). MiniLM is post-LN: the LayerNorm output is the
    residual stream, so the LN-fed groups take an explicit input_scale; value -> attention output folds exactly."""
    if len(groups) != 4:
      return None
    return ScalePlan((ScaleTarget("input_scale", None, True), ScaleTarget("linear", "attention/value"),
                      ScaleTarget("input_scale", None, True), ScaleTarget("input_scale")),
                     frozenset({"attention/query", "attention/key"}))

  def linear_groups(self) -> Sequence[Sequence[str]]:
    return bert.linear_groups()

  def embed(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    return run_method(self.module, params, bert.BertEncoder.embed, *_check_batch(batch))

  def _block_args(self, ctx: PyTree) -> tuple:
    return (ctx["mask"],)

  def head(self, params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """(B, T, hidden) -> (B, hidden) mean-pooled, L2-normalised embeddings."""
    return bert.mean_pool_normalize(hidden, ctx["mask"])

  def apply(self, params: PyTree, batch: PyTree) -> jax.Array:
    """Batch -> (B, hidden) unit-norm sentence embeddings."""
    self._check_params(params)
    return self.module.apply({"params": params}, *_check_batch(batch))

  def encode_batch(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenizes ``texts`` ([CLS] ... [SEP], truncated to 256 tokens) and right-pads them.

    Args:
      texts: B strings.
      pad_to: pad length T (>= the longest encoding); default: the longest encoding.

    Returns:
      {"input_ids", "attention_mask", "token_type_ids"}: (B, T) int32 arrays.
    """
    if self.tokenizer is None:
      raise ValueError("MiniLM.encode_batch: this model has no tokenizer; build it with load_minilm() or pass "
                       "tokenizer= to the constructor.")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
      raise TypeError(f"MiniLM.encode_batch: texts must be a non-empty sequence of str, got {type(texts).__name__}.")
    encs = self.tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encs)
    t = longest if pad_to is None else pad_to
    if not isinstance(t, int) or t < longest:
      raise ValueError(f"MiniLM.encode_batch: pad_to={pad_to!r} is shorter than the longest encoding ({longest}).")
    ids = np.zeros((len(encs), t), np.int32)
    mask = np.zeros((len(encs), t), np.int32)
    for r, e in enumerate(encs):
      ids[r, :len(e.ids)] = e.ids
      mask[r, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def minilm_params_from_safetensors(path: str | Path) -> PyTree:
  """Reads a BERT ``model.safetensors`` into a Linen params dict (torch (out, in) weights -> (in, out) kernels).

  ``embeddings.position_ids`` and the unused ``pooler.*`` tensors are skipped.
  """
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  path = Path(path)
  if not path.is_file():
    raise ValueError(f"safetensors file {path} does not exist; fetch MiniLM with `python -m jquant fetch-assets`.")
  params: dict[str, Any] = {}
  for key, w in load_file(str(path)).items():
    parts = key.split(".")
    if key == "embeddings.position_ids" or parts[0] == "pooler":
      continue
    if parts[0] == "embeddings" and len(parts) == 3:
      node = params.setdefault("embeddings", {}).setdefault(parts[1], {})
      node[_LN_LEAF[parts[2]] if parts[1] == "LayerNorm" else "embedding"] = w.astype(np.float32)
      continue
    if parts[:2] == ["encoder", "layer"] and ".".join(parts[3:-1]) in _LAYER_NAMES:
      sub = _LAYER_NAMES[".".join(parts[3:-1])]
      node = params.setdefault(f"layer_{int(parts[2])}", {})
      for p in sub.split("/"):
        node = node.setdefault(p, {})
      if sub.endswith("layernorm"):
        node[_LN_LEAF[parts[-1]]] = w.astype(np.float32)
      else:
        node[_LEAF[parts[-1]]] = (w.T if parts[-1] == "weight" else w).astype(np.float32).copy()
      continue
    raise ValueError(f"unexpected tensor {key!r} {w.shape} in {path}; this loader knows BERT encoders.")
  return jax.tree.map(jnp.asarray, params)


def _config_from_json(path: Path) -> bert.BertConfig:
  import json  # pylint: disable=import-outside-toplevel

  c = json.loads(path.read_text())
  return bert.BertConfig(vocab_size=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
                         num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                         max_positions=c["max_position_embeddings"], type_vocab_size=c["type_vocab_size"],
                         ln_eps=float(c["layer_norm_eps"]))


def load_minilm(path: str | Path | None = None, matmul: MatmulFn | None = None) -> tuple[MiniLM, PyTree]:
  """Loads all-MiniLM-L6-v2 from a folder with model.safetensors, config.json, tokenizer.json.

  ``path=None`` fetches the asset on first use.
  """
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

  if path is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    path = assets.minilm_dir()
  path = Path(path)
  missing = [f for f in ("model.safetensors", "config.json", "tokenizer.json") if not (path / f).is_file()]
  if missing:
    raise ValueError(f"MiniLM folder {path} lacks {missing}; pass the folder that holds model.safetensors, or "
                     f"fetch the asset with `python -m jquant fetch-assets`.")
  tk = Tokenizer.from_file(str(path / "tokenizer.json"))
  tk.no_padding()
  tk.enable_truncation(max_length=MAX_TOKENS)
  config = _config_from_json(path / "config.json")
  return MiniLM(config, matmul=matmul, tokenizer=tk), minilm_params_from_safetensors(path / "model.safetensors")
