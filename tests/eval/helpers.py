"""Tiny models with real (word-level) tokenizers, for fast harness tests without assets."""

from __future__ import annotations

import jax
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from jquant.models import MiniLM, SmolLM2
from tests.models.helpers import TINY_BERT, TINY_LLAMA, randomize

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings and arrows of outrageous".split()


def word_tokenizer(vocab_size: int, bert_style: bool = False) -> Tokenizer:
  vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
  for w in WORDS:
    vocab[w] = len(vocab)
  assert len(vocab) <= vocab_size
  tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  if bert_style:
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tk.enable_truncation(max_length=TINY_BERT.max_positions)
  return tk


def random_text(rng: np.random.Generator, n_words: int) -> str:
  return " ".join(rng.choice(WORDS, size=n_words))


def tiny_lm(seed: int):
  model = SmolLM2(TINY_LLAMA, tokenizer=word_tokenizer(TINY_LLAMA.vocab_size))
  return model, randomize(jax.eval_shape(model.init, jax.random.key(seed)), np.random.default_rng(seed))


def tiny_encoder(seed: int):
  model = MiniLM(TINY_BERT, tokenizer=word_tokenizer(TINY_BERT.vocab_size, bert_style=True))
  return model, randomize(jax.eval_shape(model.init, jax.random.key(seed)), np.random.default_rng(seed))
