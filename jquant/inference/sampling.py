"""Next-token selection: greedy, or temperature sampling restricted by top-k and / or top-p (nucleus)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["SamplingConfig", "filter_logits", "sample_logits"]

_NEG = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is chosen (hashable: a jit static argument).

  Attributes:
    temperature: 0 selects greedy argmax (top_k / top_p are then ignored); > 0 samples from
      ``softmax(logits / temperature)`` after the top-k and top-p filters (needs a PRNG key).
    top_k: keep the k most likely tokens (k >= 1), or None for no limit.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p, in (0, 1]; 1 keeps all.
  """

  temperature: float = 0.0
  top_k: int | None = None
  top_p: float = 1.0

  def __post_init__(self):
    t = self.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < float("inf"):
      raise ValueError(f"SamplingConfig: temperature must be a finite float >= 0 (0 = greedy), got {t!r}.")
    k = self.top_k
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
      raise ValueError(f"SamplingConfig: top_k must be None or an int >= 1, got {k!r}.")
    p = self.top_p
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
      raise ValueError(f"SamplingConfig: top_p must be in (0, 1] (1 disables nucleus filtering), got {p!r}.")
    object.__setattr__(self, "temperature", float(t))
    object.__setattr__(self, "top_p", float(p))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: float = 1.0) -> jax.Array:
  """Sets every token outside the top-k / top-p sets to -inf.

  Args:
    logits: (..., V) float.
    top_k: keep the k largest logits per row (ties at the k-th value are kept), or None.
    top_p: keep the most likely tokens, in descending order, up to and including the first whose cumulative
      probability reaches ``top_p`` (at least one token is always kept).

  Returns:
    (..., V) float32 with removed entries set to -inf.
  """
  logits = logits.astype(jnp.float32)
  v = logits.shape[-1]
  if top_k is not None and top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, _NEG, logits)
  if top_p < 1.0:
    srt = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs        # mass strictly ahead of each sorted token
    keep = before < top_p
    n_keep = jnp.sum(keep, axis=-1, keepdims=True)      # >= 1: the first token has before == 0
    threshold = jnp.take_along_axis(srt, n_keep - 1, axis=-1)
    logits = jnp.where(logits < threshold, _NEG, logits)
  return logits


def sample_logits(logits: jax.Array, config: SamplingConfig, key: jax.Array | None = None) -> jax.Array:
  """One token id per row.

  Args:
    logits: (B, V) next-token logits.
    config: the `SamplingConfig`.
    key: PRNG key; required unless ``config.greedy``.

  Returns:
    (B,) int32 token ids.
  """
  if not isinstance(config, SamplingConfig):
    raise TypeError(f"sample_logits: config must be a SamplingConfig, got {type(config).__name__}.")
  if config.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if key is None:
    raise ValueError("sample_logits: sampling with temperature > 0 needs key=jax.random.key(seed).")
  filtered = filter_logits(logits.astype(jnp.float32) / config.temperature, config.top_k, config.top_p)
  return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
