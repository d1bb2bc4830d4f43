"""Tiny random Llama (SmolLM2 architecture) vs a NumPy float64 reference; blockwise protocol; RoPE."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.models import LlamaConfig, SmolLM2
from jquant.models.llama import apply_rope, rope_tables
from jquant.ptq.protocol import BlockwiseModel
from tests.models import reference as ref
from tests.models.helpers import TINY_LLAMA, randomize


@pytest.fixture(scope="module")
def tiny(module_seed):
  """One tiny model per module (init is the slow part); seeded per module (fresh under JQUANT_TEST_SEED=random)."""
  seed = module_seed
  model = SmolLM2(TINY_LLAMA)
  shapes = jax.eval_shape(model.init, jax.random.key(seed))
  return model, randomize(shapes, np.random.default_rng(seed))


def test_rope_adjacent_pairs_matches_numpy(rng):
  x = rng.standard_normal((2, 5, 3, 8))
  pos = rng.integers(0, 1000, size=(2, 5))
  cos, sin = rope_tables(jnp.asarray(pos), 8, 10000.0)
  got = apply_rope(jnp.asarray(x, jnp.float32), cos, sin)
  np.testing.assert_allclose(got, ref.rope_adjacent(x, pos, 10000.0), rtol=2e-4, atol=2e-4)


def test_rope_is_not_rotate_half(rng):
  # Position 1 rotates the first pair (x0, x1) together; rotate_half would pair x0 with x4.
  x = np.zeros((1, 2, 1, 8), np.float32)
  x[0, 1, 0, 0] = 1.0
  cos, sin = rope_tables(jnp.asarray([[0, 1]]), 8, 10000.0)
  got = np.asarray(apply_rope(jnp.asarray(x), cos, sin))[0, 1, 0]
  np.testing.assert_allclose(got[:2], [np.cos(1.0), np.sin(1.0)], rtol=1e-6)
  np.testing.assert_allclose(got[2:], 0.0, atol=1e-7)


def test_full_model_matches_numpy(tiny, rng):
  model, params = tiny
  ids = rng.integers(0, TINY_LLAMA.vocab_size, size=(2, 7))
  logits = jax.jit(model.apply)(params, jnp.asarray(ids, jnp.int32))
  assert logits.shape == (2, 7, TINY_LLAMA.vocab_size) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref.llama_lm(ref.np_params(params), ids, TINY_LLAMA), rtol=2e-4, atol=2e-4)


def test_causal(tiny, rng):
  model, params = tiny
  ids = rng.integers(0, TINY_LLAMA.vocab_size, size=(1, 6))
  ids2 = ids.copy()
  ids2[0, 4:] = (ids2[0, 4:] + 1) % TINY_LLAMA.vocab_size
  fwd = jax.jit(model.apply)
  a, b = fwd(params, jnp.asarray(ids)), fwd(params, jnp.asarray(ids2))
  np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-5)
  assert not np.allclose(a[:, 4:], b[:, 4:])


def test_blockwise_protocol_equals_apply(tiny, rng):
  model, params = tiny
  assert isinstance(model, BlockwiseModel)
  assert model.block_names() == ("layers_0", "layers_1")
  ids = jnp.asarray(rng.integers(0, TINY_LLAMA.vocab_size, size=(2, 5)), jnp.int32)
  hidden, ctx = jax.jit(model.embed)(params, {"input_ids": ids})
  block = jax.jit(model.apply_block, static_argnums=0)
  for i, name in enumerate(model.block_names()):
    hidden = block(i, params[name], hidden, ctx)
  full = jax.jit(model.apply)(params, ids)
  np.testing.assert_allclose(jax.jit(model.head)(params, hidden, ctx), full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.forward_blockwise(params, ids), full, rtol=1e-5, atol=1e-5)


def test_linear_groups_are_intercepted_in_order(tiny, rng):
  model, params = tiny
  ids = jnp.asarray(rng.integers(0, TINY_LLAMA.vocab_size, size=(1, 4)), jnp.int32)
  hidden, ctx = model.embed(params, ids)
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and type(context.module).__name__ == "Linear":
      seen.append(("/".join(context.module.path), args[0].shape))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply_block(0, params["layers_0"], hidden, ctx)
  flat = [p for g in model.linear_groups() for p in g]
  assert sorted(p for p, _ in seen) == sorted(flat)
  order = [p for p, _ in seen]
  assert [order.index(p) for p in flat] == sorted(order.index(p) for p in flat)  # groups run in listed order
  for path, shape in seen:
    node = params["layers_0"]
    for part in path.split("/"):
      node = node[part]
    assert shape[-1] == node["kernel"].shape[0]


def test_bad_inputs(tiny):
  model, params = tiny
  with pytest.raises(TypeError, match="integer array"):
    model.apply(params, jnp.zeros((1, 3), jnp.float32))
  with pytest.raises(ValueError, match="block keys"):
    model.apply({"params": params}, jnp.zeros((1, 3), jnp.int32))
  with pytest.raises(ValueError, match="block index"):
    model.apply_block(5, params["layers_0"], jnp.zeros((1, 3, 24)), {})
  with pytest.raises(ValueError, match="no tokenizer"):
    model.encode("hi")
  with pytest.raises(ValueError, match="num_kv_heads"):
    LlamaConfig(num_heads=9, num_kv_heads=2)
  with pytest.raises(ValueError, match="positive int"):
    LlamaConfig(hidden=0)
  with pytest.raises(TypeError, match="LlamaConfig"):
    SmolLM2(config="small")


def _zero_matmul(x, kernel):
  return jnp.zeros((*x.shape[:-1], kernel.shape[-1]), x.dtype)


def test_matmul_option_reaches_every_linear(tiny, rng):
  _, params = tiny
  model = SmolLM2(TINY_LLAMA, matmul=_zero_matmul)
  ids = rng.integers(0, TINY_LLAMA.vocab_size, size=(1, 5))
  # Every linear outputs 0, so each block is the identity: logits = rmsnorm(embedding) @ embedding.T.
  p = ref.np_params(params)
  want = ref.rms_norm(p["embed_tokens"]["embedding"][ids], p["norm"]["scale"], TINY_LLAMA.rms_eps)
  want = want @ p["embed_tokens"]["embedding"].T
  np.testing.assert_allclose(jax.jit(model.apply)(params, jnp.asarray(ids, jnp.int32)), want, rtol=2e-4, atol=2e-4)


def test_input_scale_in_params_is_used(tiny, rng):
  model, params = tiny
  s = jnp.asarray(rng.uniform(0.5, 2.0, TINY_LLAMA.intermediate), jnp.float32)
  down = params["layers_1"]["mlp"]["down_proj"]
  scaled = jax.tree.map(lambda x: x, params)
  scaled["layers_1"]["mlp"]["down_proj"] = {"kernel": down["kernel"] / s[:, None], "input_scale": s}
  ids = jnp.asarray(rng.integers(0, TINY_LLAMA.vocab_size, size=(1, 5)), jnp.int32)
  fwd = jax.jit(model.apply)
  np.testing.assert_allclose(fwd(scaled, ids), fwd(params, ids), rtol=1e-4, atol=1e-4)
  broken = jax.tree.map(lambda x: x, scaled)
  broken["layers_1"]["mlp"]["down_proj"] = {"kernel": down["kernel"], "input_scale": s}
  assert not np.allclose(fwd(broken, ids), fwd(params, ids), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("bad", [-1, TINY_LLAMA.vocab_size])
def test_token_ids_outside_the_vocabulary_are_errors(tiny, bad):
  model, params = tiny[0], tiny[1]
  ids = np.zeros((1, 4), np.int32)
  ids[0, 2] = bad
  with pytest.raises(ValueError, match=r"outside the vocabulary \[0, %d\)" % TINY_LLAMA.vocab_size):
    model.apply(params, jnp.asarray(ids))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    model.embed(params, jnp.asarray(ids))


def test_presets_are_the_architectures():
  from jquant.models import BertConfig, BertModel, LlamaModel, MiniLM
  assert SmolLM2 is LlamaModel and MiniLM is BertModel          # the old names stay (aliases)
  assert LlamaModel().config == LlamaConfig() and BertModel().config == BertConfig()
  assert LlamaConfig().head_dim == 64 and BertConfig().head_dim == 32     # SmolLM2-135M, all-MiniLM-L6-v2
  with pytest.raises(TypeError, match="BertModel: config must be a BertConfig, got LlamaConfig"):
    BertModel(LlamaConfig())


def test_generate_greedy_is_a_deprecated_call_into_generate(tiny, rng):
  from jquant.inference import generate
  model, params = tiny
  prompt = [int(i) for i in rng.integers(0, TINY_LLAMA.vocab_size, 5)]
  with pytest.warns(DeprecationWarning, match="use jquant.inference.generate"):
    out = model.generate_greedy(params, prompt, 4)
  assert out == [int(t) for t in generate(model, params, np.asarray([prompt]), max_new_tokens=4).tokens[0]]
  with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="prompt_ids is empty"):
    model.generate_greedy(params, [], 4)
