"""Issue 19: quantized embeddings in the models, the data-free quantize path, the demo plot's labels, help examples."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import ptq
from jquant.cli import SUBCOMMANDS, build_parser, common, demo_plot
from jquant.models import MiniLM, SmolLM2
from jquant.models.layers import embed_rows
from jquant.ptq.access import copy_dicts, get_in, set_in
from tests.models.helpers import TINY_BERT, TINY_LLAMA, randomize


def _tiny(model, seed):
  return model, randomize(jax.eval_shape(model.init, jax.random.key(seed)), np.random.default_rng(seed))


@pytest.mark.parametrize("family", ["smollm2", "minilm"])
def test_int8_embedding_runs_as_its_dequantized_table(family, rng):
  model, params = _tiny(SmolLM2(TINY_LLAMA) if family == "smollm2" else MiniLM(TINY_BERT), int(rng.integers(1 << 30)))
  q = common.quantize_embedding(family, params, params, "int8")
  path = common.model_kind(family).embedding_path
  qa = get_in(q, path)
  assert isinstance(qa, jq.QArray) and qa.qtype == jq.INT8 and qa.scale.shape == (qa.shape[0], 1)
  w = np.asarray(get_in(params, path), np.float64)
  # NumPy float64 reference of the int8 per-row grid: scale = max|row| / 127, codes = round-half-even(w / scale)
  scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
  deq = np.clip(np.round(w / scale), -127, 127) * scale
  ids = rng.integers(0, w.shape[0], (2, 7)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(embed_rows(qa, jnp.asarray(ids), jnp.float32)), deq[ids], rtol=1e-5, atol=1e-6)
  assert np.abs(deq - w).max() > 0                      # the grid moved the table: the check below is not vacuous
  ref = copy_dicts(params)
  set_in(ref, path, jnp.asarray(deq, jnp.float32))
  batch = ids if family == "smollm2" else {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids)}
  np.testing.assert_allclose(np.asarray(model.apply(q, batch)), np.asarray(model.apply(ref, batch)), rtol=1e-4,
                             atol=1e-5)
  assert common.quantize_embedding(family, params, params, "float") is params
  assert common.params_nbytes(q) < common.params_nbytes(params)


@pytest.mark.slow
def test_data_free_path_equals_the_pipeline_rtn(rng):
  model, params = _tiny(SmolLM2(TINY_LLAMA), int(rng.integers(1 << 30)))
  method = ptq.RTN(common.weight_spec(4, 8))
  fast = common.quantize_data_free(model, params, method)
  batches = [jnp.asarray(rng.integers(0, TINY_LLAMA.vocab_size, (2, 8)), jnp.int32)]
  slow, _ = ptq.quantize_model(model, params, batches, method, progress=False)
  a = jax.tree.leaves(fast, is_leaf=lambda x: isinstance(x, jq.QArray))
  b = jax.tree.leaves(slow, is_leaf=lambda x: isinstance(x, jq.QArray))
  assert sum(isinstance(x, jq.QArray) for x in a) == 2 * 7
  for x, y in zip(a, b):
    assert type(x) is type(y)
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_embedding_spec_and_bf16_bytes():
  with pytest.raises(ValueError, match="--embedding 'int2'"):
    common.embedding_spec("int2")
  assert common.embedding_spec("float") is None
  assert common.bf16_nbytes({"a": jnp.zeros((3, 4)), "b": jnp.zeros((5,), jnp.int32)}) == 24


_SMOL = [("fp32 (reference)", 32, "float", 513.1, 42.56), ("RTN", 8, "int8", 128.0, 42.99),
         ("SmoothQuant W8A8 (+GPTQ)", 8, "int8", 128.0, 42.93), ("LLM.int8", 8, "int8", 128.0, 44.2),
         ("RTN", 4, "int8", 84.9, 53.4), ("GPTQ (act-order, MSE grid)", 4, "int8", 85.4, 47.2),
         ("GPTQ (act-order, MSE grid)", 4, "float", 166.4, 47.12), ("AWQ", 4, "int8", 84.9, 48.8),
         ("RTN", 3, "int8", 72.0, 123.0), ("GPTQ (act-order, MSE grid)", 3, "int8", 72.6, 60.4),
         ("AWQ", 3, "int8", 72.0, 79.4), ("GPTQ (act-order, imatrix grid)", 4, "int8", 85.6, 46.37)]
_MINI = [("fp32 (reference)", 32, "float", 86.1, 1.0), ("RTN", 8, "int8", 22.0, 0.9993),
         ("SmoothQuant W8A8 (+GPTQ)", 8, "int8", 22.1, 0.9985), ("LLM.int8", 8, "int8", 22.0, 0.9988),
         ("RTN", 4, "int8", 17.0, 0.9428), ("GPTQ (act-order, MSE grid)", 4, "int8", 17.1, 0.9866),
         ("GPTQ (act-order, MSE grid)", 4, "float", 51.1, 0.9868), ("AWQ", 4, "int8", 17.1, 0.9703),
         ("RTN", 3, "int8", 15.7, 0.8034), ("GPTQ (act-order, MSE grid)", 3, "int8", 15.8, 0.9525),
         ("AWQ", 3, "int8", 15.8, 0.9047), ("GPTQ (act-order, imatrix grid)", 4, "int8", 17.1, 0.9874)]


@pytest.mark.parametrize("name,table", [("smollm2", _SMOL), ("minilm", _MINI)])
def test_plot_labels_never_overlap(name, table):
  """Demo-like rows (several points at one size, as the w8 methods): every label placed, no two text boxes overlap."""
  import matplotlib.pyplot as plt
  key = "ppl" if name == "smollm2" else "mean_cos"
  rows = [{"method": m, "bits": b, "embedding": e, "size_mb": s, key: v} for m, b, e, s, v in table]
  fig = demo_plot.figure(name, rows)
  try:
    boxes = demo_plot.label_boxes(fig)
    assert len(boxes) == len(rows)
    bad = [(i, j) for i, j in itertools.combinations(range(len(boxes)), 2) if boxes[i].overlaps(boxes[j])]
    assert not bad, [(table[i][:2], table[j][:2]) for i, j in bad]
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(set(texts)) == len(texts), texts      # each point says which row it is (MSE vs imatrix GPTQ w4)
    assert ax.get_xlabel() == "weights stored (MB)" and ("perplexity" in ax.get_ylabel()) == (name == "smollm2")
    assert any(abs(line.get_ydata()[0] - table[0][4]) < 1e-9 for line in ax.lines)   # the fp32 reference line
  finally:
    plt.close(fig)


def test_every_help_ends_with_worked_examples():
  parser = build_parser()
  texts = [parser.format_help()]
  sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")   # pylint: disable=protected-access
  texts += [p.format_help() for p in sub.choices.values()]
  assert len(texts) == 1 + len(SUBCOMMANDS)
  for t in texts:
    tail = t[t.index("examples:"):]
    assert 2 <= sum(line.lstrip().startswith(("python -m jquant", "make ")) for line in tail.splitlines()) <= 4, t


def test_demo_rotated_rows_quantize_the_rotated_model_once(rng):
  """A ``rotate=True`` demo row quantizes the Hadamard-rotated model (the same float function), rotated once."""
  from jquant.cli import demo
  model, params = _tiny(SmolLM2(TINY_LLAMA), int(rng.integers(1 << 30)))
  ids = jnp.asarray(rng.integers(0, TINY_LLAMA.vocab_size, (2, 8)), jnp.int32)
  cache = {}
  c = demo.Config("RTN rotated", "rtn", 8, rotate=True)
  m, p, lin = demo.quantize_config(c, common.build_method("rtn", 8, None), model, params, None, cache)
  assert m.config.rotate_down and not model.config.rotate_down and cache["params"] is p
  ref = np.asarray(model.apply(params, ids), np.float64)
  np.testing.assert_allclose(np.asarray(m.apply(p, ids), np.float64), ref, atol=2e-5 * np.abs(ref).max())
  got = np.asarray(m.apply(lin, ids), np.float64)          # int8 per-channel linears of the rotated model
  assert 0 < np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
  assert demo.quantize_config(c, common.build_method("rtn", 4, 8), model, params, None, cache)[1] is p
  assert [x.rotate for x in demo.CONFIGS if x.rotate] and all(x.extended for x in demo.CONFIGS if x.rotate)
