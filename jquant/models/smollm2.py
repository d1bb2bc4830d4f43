"""SmolLM2-135M-Instruct: Llama LM loaded from the shipped Q4_1 GGUF (dequantized = the reference model).

    model, params = load_smollm2()
    logits = model.apply(params, model.encode_batch(["The capital of France is"]))

``SmolLM2`` implements ``jquant.ptq.protocol.BlockwiseModel``. A batch is a (B, T) int array of token ids or a
dict with ``"input_ids"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jquant.models import llama
from jquant.models.blockwise import BlockwiseBase, PyTree, run_method
from jquant.models.layers import MatmulFn
from jquant.ptq.scaling import ScalePlan, ScaleTarget

__all__ = ["SmolLM2", "load_smollm2", "smollm2_params_from_gguf", "smollm2_tokenizer_from_gguf"]

_GGUF_BLOCK_NAMES = {
    "attn_norm": ("input_layernorm", "scale"),
    "ffn_norm": ("post_attention_layernorm", "scale"),
    "attn_q": ("self_attn/q_proj", "kernel"),
    "attn_k": ("self_attn/k_proj", "kernel"),
    "attn_v": ("self_attn/v_proj", "kernel"),
    "attn_output": ("self_attn/o_proj", "kernel"),
    "ffn_gate": ("mlp/gate_proj", "kernel"),
    "ffn_up": ("mlp/up_proj", "kernel"),
    "ffn_down": ("mlp/down_proj", "kernel"),
}


def _input_ids(batch: Any, vocab_size: int | None = None) -> jax.Array:
  ids = batch["input_ids"] if isinstance(batch, dict) else batch
  if not hasattr(ids, "ndim") or ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"SmolLM2 batch must be a (B, T) integer array of token ids or a dict with 'input_ids', got "
                    f"{type(ids).__name__} with shape {getattr(ids, 'shape', None)} and dtype "
                    f"{getattr(ids, 'dtype', None)}.")
  if vocab_size is not None and ids.size and not isinstance(ids, jax.core.Tracer):
    lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
    if lo < 0 or hi >= vocab_size:    # nn.Embed would read outside the table (NaN rows), not fail
      raise ValueError(f"SmolLM2: token ids in [{lo}, {hi}] lie outside the vocabulary [0, {vocab_size}); encode "
                       "text with model.encode / encode_batch.")
  return ids


class SmolLM2(BlockwiseBase):
  """A Llama-architecture causal LM as a BlockwiseModel.

  Args:
    config: architecture (default: SmolLM2-135M).
    matmul: optional hashable ``matmul(x, kernel)`` used by every Linear (see ``jquant.models.layers.Linear``).
    tokenizer: optional ``tokenizers.Tokenizer`` (``load_smollm2`` builds it from the GGUF).
  """

  def __init__(self, config: llama.LlamaConfig = llama.LlamaConfig(), matmul: MatmulFn | None = None,
               tokenizer: Any = None):
    if not isinstance(config, llama.LlamaConfig):
      raise TypeError(f"SmolLM2: config must be a LlamaConfig, got {type(config).__name__}.")
    self.config = config
    self.matmul = matmul
    self.tokenizer = tokenizer
    self.module = llama.LlamaLM(config, matmul)
    self._block = llama.LlamaBlock(config, matmul)
    self._prefix = "layers_"
    self._num_blocks = config.num_layers
    super().__init__()

  def init(self, rng: jax.Array, seq_len: int = 8) -> PyTree:
    """Random params (for tests and tiny configs)."""
    return jax.jit(self.module.init)(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]

  def scale_plan(self, groups) -> ScalePlan | None:
    """AWQ / SmoothQuant fold targets (`jquant.ptq.scaling`): input_layernorm -> q/k/v, v_proj -> o_proj (only
    without grouped-query attention), post_attention_layernorm -> gate/up, up_proj -> down_proj."""
    if len(groups) != 4:
      return None
    cfg = self.config
    o_target = ScaleTarget("linear", "self_attn/v_proj") if cfg.num_kv_heads == cfg.num_heads else ScaleTarget("none")
    return ScalePlan((ScaleTarget("norm", "input_layernorm", True), o_target,
                      ScaleTarget("norm", "post_attention_layernorm", True), ScaleTarget("linear", "mlp/up_proj")),
                     frozenset({"self_attn/q_proj", "self_attn/k_proj"}))

  def linear_groups(self) -> Sequence[Sequence[str]]:
    return llama.linear_groups()

  def embed(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    return run_method(self.module, params, llama.LlamaLM.embed, _input_ids(batch, self.config.vocab_size))

  def _block_args(self, ctx: PyTree) -> tuple:
    return ctx["cos"], ctx["sin"]

  def head(self, params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """(B, T, hidden) -> (B, T, vocab) logits."""
    return run_method(self.module, params, llama.LlamaLM.head, hidden)

  def apply(self, params: PyTree, batch: PyTree) -> jax.Array:
    """(B, T) token ids -> (B, T, vocab) float32 logits."""
    self._check_params(params)
    return self.module.apply({"params": params}, _input_ids(batch, self.config.vocab_size))

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no BOS: the GGUF says add_bos_token = False)."""
    if self.tokenizer is None:
      raise ValueError("SmolLM2.encode: this model has no tokenizer; build it with load_smollm2() or pass "
                       "tokenizer= to the constructor.")
    if not isinstance(text, str):
      raise TypeError(f"SmolLM2.encode: text must be a str, got {type(text).__name__}.")
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
    """(B, T) int32 ids for texts that tokenize to the same length (use ``encode`` for ragged text)."""
    ids = [self.encode(t) for t in texts]
    if len({len(i) for i in ids}) != 1:
      raise ValueError(f"SmolLM2.encode_batch: texts tokenize to different lengths {[len(i) for i in ids]}; "
                       f"encode them one by one.")
    return np.asarray(ids, np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    if self.tokenizer is None:
      raise ValueError("SmolLM2.decode: this model has no tokenizer; build it with load_smollm2().")
    return self.tokenizer.decode(list(int(i) for i in ids))

  def generate_greedy(self, params: PyTree, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation (recomputes the full prefix each step; a correctness check, not a fast path)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
      raise ValueError(f"generate_greedy: max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    ids = [int(i) for i in prompt_ids]
    if not ids:
      raise ValueError("generate_greedy: prompt_ids is empty; give at least one token.")
    total = len(ids) + max_new_tokens
    buf = np.zeros((1, total), np.int32)  # fixed shape: one compile; causal attention ignores the padding
    for _ in range(max_new_tokens):
      buf[0, :len(ids)] = ids
      logits = self.forward_blockwise(params, jnp.asarray(buf))
      ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
    return ids[len(prompt_ids):]


def _open_gguf(path: Path):
  import gguf  # pylint: disable=import-outside-toplevel  (optional dependency: pip install gguf)

  path = Path(path)
  if not path.is_file():
    raise ValueError(f"GGUF file {path} does not exist; fetch SmolLM2 with `python -m jquant fetch-assets`.")
  return gguf, gguf.GGUFReader(str(path))


def _field(reader, key: str) -> Any:
  f = reader.fields.get(key)
  if f is None:
    raise ValueError(f"GGUF file lacks metadata {key!r}; is it a Llama-architecture model?")
  return f.contents()


def smollm2_config_from_gguf(reader) -> llama.LlamaConfig:
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"expected a GGUF with general.architecture 'llama', got {arch!r}.")
  tok = reader.fields["tokenizer.ggml.tokens"]
  return llama.LlamaConfig(
      vocab_size=len(tok.data), hidden=int(_field(reader, "llama.embedding_length")),
      intermediate=int(_field(reader, "llama.feed_forward_length")), num_layers=int(_field(reader, "llama.block_count")),
      num_heads=int(_field(reader, "llama.attention.head_count")),
      num_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
      rope_base=_f32(_field(reader, "llama.rope.freq_base")),
      rms_eps=_f32(_field(reader, "llama.attention.layer_norm_rms_epsilon")))


def _f32(v) -> float:
  """A float32 metadata value as the shortest decimal that rounds to it (9.9999997e-06 -> 1e-05)."""
  return float(str(np.float32(v)))


def smollm2_params_from_gguf(path: str | Path) -> tuple[llama.LlamaConfig, PyTree]:
  """Reads and dequantizes every tensor of a Llama GGUF into a Linen params dict (kernels (in, out), float32)."""
  gguf, reader = _open_gguf(path)
  return _params_from_reader(gguf, reader, path)


def _params_from_reader(gguf, reader, path) -> tuple[llama.LlamaConfig, PyTree]:
  config = smollm2_config_from_gguf(reader)
  params: dict[str, Any] = {}
  for t in reader.tensors:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)  # (out, in): GGUF dims reversed
    parts = t.name.split(".")
    if t.name == "token_embd.weight":
      params["embed_tokens"] = {"embedding": w}
    elif t.name == "output_norm.weight":
      params["norm"] = {"scale": w}
    elif len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_BLOCK_NAMES and parts[3] == "weight":
      sub, leaf = _GGUF_BLOCK_NAMES[parts[2]]
      node = params.setdefault(f"layers_{int(parts[1])}", {})
      for p in sub.split("/"):
        node = node.setdefault(p, {})
      node[leaf] = w.T.copy() if leaf == "kernel" else w
    else:
      raise ValueError(f"unexpected GGUF tensor {t.name!r} (shape {tuple(w.shape)}); this loader knows tied-embedding "
                       f"Llama models (token_embd, blk.N.{{{', '.join(_GGUF_BLOCK_NAMES)}}}, output_norm).")
  missing = [f"layers_{i}" for i in range(config.num_layers) if f"layers_{i}" not in params]
  if missing or "embed_tokens" not in params or "norm" not in params:
    raise ValueError(f"GGUF file {path} is incomplete: missing {missing or ['embed_tokens/norm']}.")
  return config, jax.tree.map(jnp.asarray, params)


def smollm2_tokenizer_from_gguf(path: str | Path):
  """A ``tokenizers.Tokenizer`` from the GGUF's byte-level BPE vocabulary and merges.

  Pre-tokenizer: Digits(individual_digits=True) then ByteLevel(add_prefix_space=False); no BOS is added.
  """
  _, reader = _open_gguf(path)
  return _tokenizer_from_reader(reader)


def _tokenizer_from_reader(reader):
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel

  tokens = _field(reader, "tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  types = _field(reader, "tokenizer.ggml.token_type")
  vocab = {tok: i for i, tok in enumerate(tokens)}
  tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tk.decoder = decoders.ByteLevel()
  control = [AddedToken(tokens[i], special=True, normalized=False) for i, ty in enumerate(types) if int(ty) == 3]
  tk.add_special_tokens(control)
  return tk


def load_smollm2(path: str | Path | None = None, matmul: MatmulFn | None = None) -> tuple[SmolLM2, PyTree]:
  """Loads SmolLM2-135M-Instruct (fetching the asset on first use when ``path`` is None).

  Returns:
    (model, params): params are the dequantized GGUF weights, float32.
  """
  if path is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    path = assets.smollm2_gguf()
  gguf, reader = _open_gguf(path)
  config, params = _params_from_reader(gguf, reader, path)
  return SmolLM2(config, matmul=matmul, tokenizer=_tokenizer_from_reader(reader)), params
