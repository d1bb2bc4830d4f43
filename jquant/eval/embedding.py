"""Sentence-embedding fidelity of a (quantized) encoder against its fp32 reference, on Hamlet paragraphs."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jquant.eval.text import paragraphs

__all__ = ["EmbeddingFidelity", "embed_texts", "embedding_fidelity", "fidelity_metrics"]


@dataclasses.dataclass(frozen=True)
class EmbeddingFidelity:
  """mean/min cosine between quantized and reference embeddings, and top-1 nearest-neighbour agreement."""

  mean_cos: float
  min_cos: float
  top1_agree: float
  n: int


def embed_texts(model, params, texts: Sequence[str], batch_size: int = 64, min_pad: int = 16) -> np.ndarray:
  """Embeddings of ``texts`` in length-bucketed, fixed-shape batches.

  Texts are sorted by token count and cut into batches of ``batch_size``; each batch is padded to the next power
  of two >= its longest encoding (at least ``min_pad``), and the last batch is filled with copies. So the model
  compiles once per bucket length (at most ~5 shapes for 256-token truncation), never per batch, and padding
  costs little. Results come back in the input order.

  Args:
    model: a ``jquant.models.MiniLM`` (anything with ``tokenizer``, ``encode_batch`` and ``forward_blockwise``).
    params: its params.
    texts: N strings.
    batch_size: texts per forward pass.
    min_pad: smallest padded length.

  Returns:
    (N, hidden) float32 unit vectors.
  """
  if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(min_pad, int) or min_pad < 1:
    raise ValueError(f"embed_texts: batch_size and min_pad must be positive ints, got {batch_size!r}, {min_pad!r}.")
  texts = list(texts)
  if not texts or not all(isinstance(t, str) for t in texts):
    raise TypeError("embed_texts: texts must be a non-empty sequence of str.")
  lengths = np.array([len(e.ids) for e in model.tokenizer.encode_batch(texts)])
  order = np.argsort(lengths, kind="stable")
  out = np.empty((len(texts), model.config.hidden), np.float32)
  for s in range(0, len(texts), batch_size):
    idx = order[s:s + batch_size]
    chunk = [texts[i] for i in idx]
    chunk += [chunk[0]] * (batch_size - len(chunk))
    pad_to = max(min_pad, 1 << int(np.ceil(np.log2(max(int(lengths[idx].max()), 1)))))
    emb = model.forward_blockwise(params, model.encode_batch(chunk, pad_to=pad_to))
    out[idx] = np.asarray(emb, np.float32)[:len(idx)]
  return out


def fidelity_metrics(ref: np.ndarray, approx: np.ndarray) -> EmbeddingFidelity:
  """Compares two sets of unit embeddings.

  Args:
    ref: (N, D) reference embeddings (unit norm).
    approx: (N, D) embeddings of the same texts from the quantized model.

  Returns:
    mean/min of the row-wise cosine, and the fraction of rows whose nearest other row (by cosine, excluding
    itself) is the same under both.
  """
  ref = np.asarray(ref, np.float64)
  approx = np.asarray(approx, np.float64)
  if ref.shape != approx.shape or ref.ndim != 2 or ref.shape[0] < 2:
    raise ValueError(f"fidelity_metrics: need two (N, D) arrays of equal shape with N >= 2, got {ref.shape} and "
                     f"{approx.shape}.")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  ref, approx = unit(ref), unit(approx)
  cos = np.sum(ref * approx, axis=1)

  def nn_index(x):
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)

  agree = float(np.mean(nn_index(ref) == nn_index(approx)))
  return EmbeddingFidelity(mean_cos=float(cos.mean()), min_cos=float(cos.min()), top1_agree=agree, n=ref.shape[0])


def embedding_fidelity(model, params, ref_params=None, text: str | None = None, n: int = 512,
                       min_words: int = 8, ref_embeddings: np.ndarray | None = None) -> EmbeddingFidelity:
  """Fidelity of ``params`` vs ``ref_params`` on the first ``n`` paragraphs (>= ``min_words`` words) of ``text``.

  Args:
    model: a ``jquant.models.MiniLM``.
    params: the params to evaluate (e.g. quantized).
    ref_params: the fp32 reference params (or give ``ref_embeddings``; with neither, ``params`` is compared
      to itself, which checks the harness: mean_cos 1).
    text: the document; None uses Hamlet.
    n: number of paragraphs (the text must have at least 2 such paragraphs; fewer than n are used if it has
      fewer).
    min_words: paragraph filter.
    ref_embeddings: precomputed reference embeddings of the same paragraphs (saves a forward pass).

  Returns:
    EmbeddingFidelity.
  """
  if text is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    text = assets.shakespeare_text("hamlet")
  paras = paragraphs(text, n=n, min_words=min_words)
  if len(paras) < 2:
    raise ValueError(f"embedding_fidelity: the text has {len(paras)} blank-line-separated paragraphs with >= "
                     f"{min_words} words; need at least 2 (give a longer text or lower min_words).")
  approx = embed_texts(model, params, paras)
  if ref_embeddings is None:
    ref_embeddings = approx if ref_params is None else embed_texts(model, ref_params, paras)
  elif np.shape(ref_embeddings) != approx.shape:
    raise ValueError(f"embedding_fidelity: ref_embeddings has shape {np.shape(ref_embeddings)}, expected "
                     f"{approx.shape} (the embeddings of the same {len(paras)} paragraphs).")
  return fidelity_metrics(ref_embeddings, approx)
