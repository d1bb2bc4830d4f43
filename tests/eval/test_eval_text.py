"""Text helpers: paragraphs, windows, file reading."""

import numpy as np
import pytest

from jquant.eval import paragraphs, read_text, token_windows
from jquant.eval.text import random_token_windows


def test_paragraphs_split_and_filter():
  text = "one two three four five six seven eight\nnine\n\nshort one\n \t\nA B C D E F G H\r\n\r\nX"
  assert paragraphs(text) == ["one two three four five six seven eight\nnine", "A B C D E F G H"]
  assert paragraphs(text, n=1) == ["one two three four five six seven eight\nnine"]
  assert paragraphs(text, min_words=1)[-1] == "X"
  with pytest.raises(ValueError, match="positive int"):
    paragraphs(text, n=0)
  with pytest.raises(TypeError, match="must be a str"):
    paragraphs(b"bytes")


def test_token_windows(rng):
  ids = rng.integers(0, 100, size=50)
  w = token_windows(ids, 3, 16)
  assert w.shape == (3, 16) and w.dtype == np.int32
  np.testing.assert_array_equal(w.ravel(), ids[:48])
  with pytest.raises(ValueError, match=r"50 tokens, too short for 4 windows of 16 tokens .*at most 3 windows"):
    token_windows(ids, 4, 16)
  with pytest.raises(ValueError, match="seq_len must be >= 2"):
    token_windows(ids, 1, 1)
  with pytest.raises(ValueError, match="num_windows must be a positive int"):
    token_windows(ids, 0, 8)


def test_random_token_windows_seeded_and_in_documents(rng):
  docs = [rng.integers(0, 1000, size=int(n)) for n in rng.integers(20, 80, size=5)]
  a = random_token_windows(docs, 7, 10, seed=3)
  np.testing.assert_array_equal(a, random_token_windows(docs, 7, 10, seed=3))
  assert not np.array_equal(a, random_token_windows(docs, 7, 10, seed=4))
  for row in a:
    assert any(any(np.array_equal(row, d[s:s + 10]) for s in range(len(d) - 9)) for d in docs)
  with pytest.raises(ValueError, match="no document is longer"):
    random_token_windows(docs, 2, 100, seed=0)


def test_read_text(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    read_text(tmp_path / "missing.txt")
  (tmp_path / "empty.txt").write_text("  \n")
  with pytest.raises(ValueError, match="is empty"):
    read_text(tmp_path / "empty.txt")
  (tmp_path / "a.txt").write_text("hello")
  assert read_text(tmp_path / "a.txt") == "hello"
