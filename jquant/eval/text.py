"""Text handling for evaluation and calibration: reading files, paragraphs, token windows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["read_text", "paragraphs", "token_windows", "random_token_windows"]

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def read_text(path: str | Path) -> str:
  """Reads a UTF-8 text file with a clear error when it is missing or empty."""
  p = Path(path).expanduser()
  if not p.is_file():
    raise ValueError(f"text file {str(p)!r} does not exist or is not a file; pass the path of a UTF-8 text file.")
  text = p.read_text(encoding="utf-8", errors="replace")
  if not text.strip():
    raise ValueError(f"text file {str(p)!r} is empty; pass a file with some text in it.")
  return text


def paragraphs(text: str, n: int | None = None, min_words: int = 8) -> list[str]:
  """Blank-line-separated paragraphs with at least ``min_words`` whitespace-separated words, in order.

  Args:
    text: the document.
    n: keep the first ``n`` (None: all).
    min_words: minimum word count.

  Returns:
    Paragraph strings (stripped, inner newlines kept).
  """
  if not isinstance(text, str):
    raise TypeError(f"paragraphs: text must be a str, got {type(text).__name__}.")
  if n is not None and (not isinstance(n, int) or n < 1):
    raise ValueError(f"paragraphs: n must be a positive int or None, got {n!r}.")
  out = [p.strip() for p in _BLANK_LINE.split(text.replace("\r\n", "\n"))]
  out = [p for p in out if len(p.split()) >= min_words]
  return out if n is None else out[:n]


def token_windows(ids: Sequence[int] | np.ndarray, num_windows: int, seq_len: int) -> np.ndarray:
  """The first ``num_windows`` non-overlapping windows of ``seq_len`` tokens.

  Returns:
    (num_windows, seq_len) int32.
  """
  ids = np.asarray(ids, np.int32)
  for name, v in (("num_windows", num_windows), ("seq_len", seq_len)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"token_windows: {name} must be a positive int, got {v!r}.")
  if seq_len < 2:
    raise ValueError(f"token_windows: seq_len must be >= 2 (one input and one target), got {seq_len}.")
  need = num_windows * seq_len
  if ids.size < need:
    raise ValueError(f"the text has {ids.size} tokens, too short for {num_windows} windows of {seq_len} tokens "
                     f"({need} needed); ask for at most {ids.size // seq_len} windows or give a longer text.")
  return ids[:need].reshape(num_windows, seq_len)


def random_token_windows(docs: Sequence[np.ndarray], num_windows: int, seq_len: int, seed: int) -> np.ndarray:
  """Random ``seq_len``-token windows from tokenized documents (seeded; documents weighted by their length).

  Returns:
    (num_windows, seq_len) int32.
  """
  if not isinstance(num_windows, int) or num_windows < 1 or not isinstance(seq_len, int) or seq_len < 2:
    raise ValueError(f"random_token_windows: need num_windows >= 1 and seq_len >= 2, got {num_windows}, {seq_len}.")
  docs = [np.asarray(d, np.int32) for d in docs if len(d) > seq_len]
  if not docs:
    raise ValueError(f"random_token_windows: no document is longer than seq_len={seq_len} tokens.")
  starts = np.array([len(d) - seq_len for d in docs], np.float64)
  rng = np.random.default_rng(seed)
  which = rng.choice(len(docs), size=num_windows, p=starts / starts.sum())
  out = np.empty((num_windows, seq_len), np.int32)
  for r, k in enumerate(which):
    s = int(rng.integers(0, len(docs[k]) - seq_len + 1))
    out[r] = docs[k][s:s + seq_len]
  return out
