"""Hadamard rotations of a Llama model: the rotated float model computes the same logits; bad inputs raise."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.models import SmolLM2
from jquant.models.llama import LlamaConfig
from jquant.models.rotation import rotate, rotated_model
from jquant.ops.hadamard import hadamard_matrix
from tests.models.helpers import randomize

# hidden 48 = 12 x 4, head_dim 16, intermediate 96 = 12 x 8: the Paley factor and the butterfly both in play
TINY = LlamaConfig(vocab_size=37, hidden=48, intermediate=96, num_layers=2, num_heads=3, num_kv_heads=1,
                   rope_base=10000.0, rms_eps=1e-5)


def _setup(rng, **cfg):
  model = SmolLM2(dataclasses.replace(TINY, **cfg))
  params = randomize(model.init(jax.random.PRNGKey(0)), rng)
  ids = jnp.asarray(rng.integers(0, TINY.vocab_size, (2, 9)), jnp.int32)
  return model, params, ids


@pytest.mark.parametrize("cfg,online", [({}, True), ({"tie_embeddings": False, "qkv_bias": True, "o_bias": True},
                                                     False)])
def test_rotated_model_computes_the_same_logits(cfg, online, rng):
  model, params, ids = _setup(rng, **cfg)
  rmodel, rparams = rotate(model, params, seed=int(rng.integers(1 << 20)), online=online)
  assert not rmodel.config.tie_embeddings and rmodel.config.rotate_down == online
  assert rparams["layers_0"]["input_layernorm"]["scale"].tolist() == [1.0] * TINY.hidden
  ref = np.asarray(model.apply(params, ids), np.float64)
  got = np.asarray(rmodel.apply(rparams, ids), np.float64)
  # float32 end to end, 2 blocks of width <= 96 (relative error per op ~ sqrt(n) eps ~ 1e-6): 2e-5 of the logit scale
  np.testing.assert_allclose(got, ref, atol=2e-5 * np.abs(ref).max(), rtol=0)
  # really rotated: the embedding is E R1, not E
  e = np.asarray(params["embed_tokens"]["embedding"], np.float64)
  assert np.abs(np.asarray(rparams["embed_tokens"]["embedding"]) - e).max() > 0.1
  np.testing.assert_allclose(np.linalg.norm(np.asarray(rparams["embed_tokens"]["embedding"]), axis=1),
                             np.linalg.norm(e, axis=1), rtol=1e-5)


def test_rotation_flattens_an_outlier_channel(rng):
  """R1 spreads one huge residual channel over all channels (the point of rotating before quantization)."""
  model, params, _ = _setup(rng)
  e = np.asarray(params["embed_tokens"]["embedding"]).copy()
  e[:, 5] *= 50.0
  params = {**params, "embed_tokens": {"embedding": jnp.asarray(e)}}
  _, rparams = rotate(model, params, seed=0)
  kurt = lambda a: float(np.max(np.abs(a)) / np.sqrt(np.mean(a ** 2)))
  assert kurt(np.asarray(rparams["embed_tokens"]["embedding"])) < 0.5 * kurt(e)


def test_down_proj_holds_r4(rng):
  model, params, _ = _setup(rng)
  _, r_on = rotate(model, params, seed=3, online=True)
  _, r_off = rotate(model, params, seed=3, online=False)
  h = hadamard_matrix(TINY.intermediate)
  np.testing.assert_allclose(np.asarray(r_on["layers_1"]["mlp"]["down_proj"]["kernel"]),
                             h.T @ np.asarray(r_off["layers_1"]["mlp"]["down_proj"]["kernel"], np.float64), atol=1e-5)


def test_bad_inputs(rng):
  model, params, _ = _setup(rng)
  rmodel, rparams = rotate(model, params)
  with pytest.raises(ValueError, match="already rotated"):
    rotate(rmodel, rparams)
  with pytest.raises(TypeError, match="LlamaConfig"):
    rotate(object(), params)
  with pytest.raises(TypeError, match="seed"):
    rotate(model, params, seed=1.5)
  odd = SmolLM2(dataclasses.replace(TINY, hidden=42, num_heads=3))
  with pytest.raises(ValueError, match="hidden = 42 has no Hadamard"):
    rotate(odd, params)
  with pytest.raises(ValueError, match="rotate_down needs a Hadamard size"):
    LlamaConfig(intermediate=36 + 6, rotate_down=True)
  assert rotated_model(model, online=False).config.rotate_down is False


@pytest.mark.slow
def test_rotated_smollm2_equals_the_float_model():
  from jquant.models import load_smollm2
  model, params = load_smollm2()
  ids = jnp.asarray(model.encode_batch(["To be, or not to be, that is the question: whether 'tis nobler"]))
  rmodel, rparams = rotate(model, params, seed=0)
  ref = np.asarray(model.forward_blockwise(params, ids), np.float64)
  got = np.asarray(rmodel.forward_blockwise(rparams, ids), np.float64)
  # 30 blocks of width 576 / 1536 in float32: relative error ~ 1e-5 of the logit scale
  np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
  assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_export_refuses_online_rotation(rng, tmp_path):
  from jquant.models import export_pretrained
  model, params, _ = _setup(rng)
  rmodel, rparams = rotate(model, params)
  with pytest.raises(ValueError, match="online Hadamard"):
    export_pretrained(rmodel, rparams, tmp_path / "x", "float")


# BERT (post-LN): hidden 48 = 12 x 4, intermediate 96 = 12 x 8
TINY_BERT = dict(vocab_size=41, hidden=48, intermediate=96, num_layers=2, num_heads=3, max_positions=16)


def test_rotated_bert_computes_the_same_embeddings(rng):
  from jquant.models import MiniLM
  from jquant.models.bert import BertConfig
  model = MiniLM(BertConfig(**TINY_BERT))
  params = randomize(model.init(jax.random.PRNGKey(0)), rng)
  ids = jnp.asarray(rng.integers(1, TINY_BERT["vocab_size"], (2, 7)), jnp.int32)
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids).at[1, 5:].set(0)}
  rmodel, rparams = rotate(model, params)
  assert rmodel.config.rotate_inputs and not model.config.rotate_inputs
  # every encoder kernel is H^T W (float64 oracle), embeddings and norms untouched
  for path, n in (("attention/query", 48), ("attention/output", 48), ("intermediate", 48), ("output", 96)):
    a, b = params["layer_1"], rparams["layer_1"]
    for k in path.split("/"):
      a, b = a[k], b[k]
    np.testing.assert_allclose(np.asarray(b["kernel"]), hadamard_matrix(n).T @ np.asarray(a["kernel"], np.float64),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(b["bias"]), np.asarray(a["bias"]))
  ref = np.asarray(model.apply(params, batch), np.float64)
  got = np.asarray(rmodel.apply(rparams, batch), np.float64)
  # unit vectors, float32, 2 post-LN blocks of width <= 96: ~1e-6 per op
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
  assert rotated_model(model).config.rotate_inputs
  with pytest.raises(ValueError, match="already rotated"):
    rotate(rmodel, rparams)
  with pytest.raises(ValueError, match="only online"):
    rotate(model, params, online=False)
  with pytest.raises(ValueError, match="rotate_inputs needs Hadamard sizes"):
    BertConfig(**{**TINY_BERT, "hidden": 42, "num_heads": 3}, rotate_inputs=True)


def test_scale_plans_do_not_fold_across_online_rotations(rng):
  """AWQ / SmoothQuant scales fold into the previous linear only where no online Hadamard sits between them."""
  from jquant.models import MiniLM
  from jquant.models.bert import BertConfig
  model, params, _ = _setup(rng)
  groups = model.linear_groups()
  assert model.scale_plan(groups).targets[3].kind == "linear"
  assert rotated_model(model, online=False).scale_plan(groups).targets[3].kind == "linear"
  assert rotated_model(model).scale_plan(groups).targets[3].kind == "input_scale"       # R4 before down_proj
  bert = MiniLM(BertConfig(**TINY_BERT))
  assert bert.scale_plan(bert.linear_groups()).targets[1].kind == "linear"
  assert rotated_model(bert).scale_plan(bert.linear_groups()).targets[1].kind == "input_scale"


def test_export_refuses_a_rotated_encoder(rng, tmp_path):
  from jquant.models import MiniLM, export_pretrained
  from jquant.models.bert import BertConfig
  model = MiniLM(BertConfig(**TINY_BERT))
  rmodel, rparams = rotate(model, model.init(jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match="online Hadamard transform before every linear"):
    export_pretrained(rmodel, rparams, tmp_path / "x", "float")
