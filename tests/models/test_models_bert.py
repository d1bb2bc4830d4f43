"""Tiny random BERT (MiniLM architecture) vs a NumPy float64 reference; masking; blockwise protocol."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.models import BertConfig, MiniLM
from jquant.ptq.protocol import BlockwiseModel
from tests.models import reference as ref
from tests.models.helpers import TINY_BERT, randomize


@pytest.fixture(scope="module")
def tiny(module_seed):
  seed = module_seed
  model = MiniLM(TINY_BERT)
  return model, randomize(jax.eval_shape(model.init, jax.random.key(seed)), np.random.default_rng(seed))


def _batch(rng, lengths, t):
  ids = rng.integers(1, TINY_BERT.vocab_size, size=(len(lengths), t))
  mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  return {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask)}


def test_matches_numpy_with_padding(tiny, rng):
  model, params = tiny
  batch = _batch(rng, [7, 3, 1], 7)
  got = jax.jit(model.apply)(params, batch)
  assert got.shape == (3, TINY_BERT.hidden)
  want = ref.bert_encoder(ref.np_params(params), np.asarray(batch["input_ids"]),
                          np.asarray(batch["attention_mask"]).astype(bool), TINY_BERT)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_padding_tokens_do_not_matter(tiny, rng):
  model, params = tiny
  batch = _batch(rng, [4, 2], 9)
  other = dict(batch, input_ids=batch["input_ids"].at[:, 4:].set(jnp.asarray(rng.integers(1, 50, size=(2, 5)))))
  short = {k: v[:, :4] for k, v in batch.items()}
  fwd = jax.jit(model.apply)
  a = fwd(params, batch)
  np.testing.assert_allclose(a, fwd(params, other), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, fwd(params, short), rtol=1e-5, atol=1e-6)


def test_blockwise_protocol_equals_apply(tiny, rng):
  model, params = tiny
  assert isinstance(model, BlockwiseModel)
  assert model.block_names() == ("layer_0", "layer_1")
  batch = _batch(rng, [5, 2], 5)
  hidden, ctx = jax.jit(model.embed)(params, batch)
  block = jax.jit(model.apply_block, static_argnums=0)
  for i, name in enumerate(model.block_names()):
    hidden = block(i, params[name], hidden, ctx)
  full = jax.jit(model.apply)(params, batch)
  np.testing.assert_allclose(jax.jit(model.head)(params, hidden, ctx), full, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.forward_blockwise(params, batch), full, rtol=1e-5, atol=1e-6)


def test_linear_groups_are_intercepted(tiny, rng):
  model, params = tiny
  hidden, ctx = jax.jit(model.embed)(params, _batch(rng, [3], 3))
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and type(context.module).__name__ == "Linear":
      seen.append("/".join(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply_block(1, params["layer_1"], hidden, ctx)
  flat = [p for g in model.linear_groups() for p in g]
  assert sorted(seen) == sorted(flat)
  assert [seen.index(p) for p in flat] == sorted(seen.index(p) for p in flat)


def test_bad_inputs(tiny):
  model, params = tiny
  with pytest.raises(TypeError, match="attention_mask"):
    model.apply(params, jnp.zeros((1, 3), jnp.int32))
  with pytest.raises(ValueError, match="must be equal"):
    model.apply(params, {"input_ids": jnp.zeros((1, 3), jnp.int32), "attention_mask": jnp.ones((1, 4), jnp.int32)})
  with pytest.raises(ValueError, match="no tokenizer"):
    model.encode_batch(["a"])
  with pytest.raises(ValueError, match="divisible"):
    BertConfig(hidden=10, num_heads=4)
  with pytest.raises(ValueError, match="ln_eps"):
    BertConfig(ln_eps=0.0)
