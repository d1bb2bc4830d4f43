"""Calibration data from the Shakespeare plays other than the held-out evaluation text (Hamlet)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jquant.eval.text import paragraphs, random_token_windows

__all__ = ["lm_calibration_windows", "encoder_calibration_texts"]


def _texts(texts: Sequence[str] | None) -> list[str]:
  if texts is None:
    from jquant import assets  # pylint: disable=import-outside-toplevel

    return assets.calibration_texts(exclude=("hamlet",))
  if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
    raise TypeError("calibration texts must be a sequence of str (one per document), got "
                    f"{type(texts).__name__}; wrap a single document as [text].")
  return list(texts)


def lm_calibration_windows(model, num_windows: int = 32, seq_len: int = 512, seed: int = 0,
                           texts: Sequence[str] | None = None) -> np.ndarray:
  """Random ``seq_len``-token windows (seeded) for causal-LM calibration.

  Args:
    model: a model with ``encode(text) -> list[int]`` (e.g. ``jquant.models.SmolLM2``).
    num_windows: number of windows (32 in EVAL.md's GPTQ reference).
    seq_len: tokens per window.
    seed: RNG seed.
    texts: documents to draw from; None uses every Shakespeare work except Hamlet.

  Returns:
    (num_windows, seq_len) int32 token ids.
  """
  docs = [np.asarray(model.encode(t), np.int32) for t in _texts(texts)]
  return random_token_windows(docs, num_windows, seq_len, seed)


def encoder_calibration_texts(num: int = 256, seed: int = 0, min_words: int = 8,
                              texts: Sequence[str] | None = None) -> list[str]:
  """``num`` random paragraphs (>= ``min_words`` words, seeded, without replacement) for encoder calibration.

  Args:
    num: number of paragraphs (256 in EVAL.md's GPTQ reference).
    seed: RNG seed.
    min_words: paragraph filter.
    texts: documents to draw from; None uses every Shakespeare work except Hamlet.

  Returns:
    A list of ``num`` paragraph strings.
  """
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"encoder_calibration_texts: num must be a positive int, got {num!r}.")
  pool = [p for t in _texts(texts) for p in paragraphs(t, min_words=min_words)]
  if len(pool) < num:
    raise ValueError(f"encoder_calibration_texts: only {len(pool)} paragraphs with >= {min_words} words are "
                     f"available, fewer than num={num}; lower num or give more text.")
  idx = np.random.default_rng(seed).choice(len(pool), size=num, replace=False)
  return [pool[i] for i in sorted(idx)]
