"""Bad inputs to quantize_model, runtime_model and the method configs give clear errors."""

import jax.numpy as jnp
import pytest

import jquant as jq
from jquant.ptq import access
from tests.ptq import helpers as H


@pytest.fixture
def tiny(rng):
  model, params = H.tiny_llama(rng)
  return model, params, H.llama_batches(rng, n=1)


def test_empty_calibration(tiny):
  model, params, _ = tiny
  with pytest.raises(ValueError, match="calib_batches is empty"):
    jq.ptq.quantize_model(model, params, [], jq.ptq.RTN(H.spec()), progress=False)
  with pytest.raises(ValueError, match="calib_batches is empty"):
    jq.ptq.quantize_model(model, params, iter(()), jq.ptq.RTN(H.spec()), progress=False)


def test_calibration_that_is_not_a_list_of_batches(tiny):
  model, params, batches = tiny
  with pytest.raises(TypeError, match="one array of shape"):
    jq.ptq.quantize_model(model, params, batches[0], jq.ptq.RTN(H.spec()), progress=False)
  with pytest.raises(TypeError, match="iterable of model batches"):
    jq.ptq.quantize_model(model, params, None, jq.ptq.RTN(H.spec()), progress=False)


def test_nan_activations_are_named(tiny):
  model, params, batches = tiny
  bad = access.copy_dicts(params)
  bad["layers_0"]["self_attn"]["o_proj"]["kernel"] = params["layers_0"]["self_attn"]["o_proj"]["kernel"].at[0, 0].set(
      jnp.nan)
  with pytest.raises(ValueError, match="NaN/inf inputs to linear layers_0/mlp"):
    jq.ptq.quantize_model(model, bad, batches, jq.ptq.LLMInt8(), progress=False)
  emb = access.copy_dicts(params)
  emb["embed_tokens"]["embedding"] = jnp.full_like(params["embed_tokens"]["embedding"], jnp.inf)
  with pytest.raises(ValueError, match="embedding of calibration batch 0"):
    jq.ptq.quantize_model(model, emb, batches, jq.ptq.RTN(H.spec()), progress=False)


def test_not_a_blockwise_model(tiny):
  _, params, batches = tiny
  with pytest.raises(TypeError, match="does not implement jquant.ptq.BlockwiseModel"):
    jq.ptq.quantize_model(object(), params, batches, jq.ptq.RTN(H.spec()), progress=False)


def test_unknown_method(tiny):
  model, params, batches = tiny
  with pytest.raises(TypeError, match="unknown method"):
    jq.ptq.quantize_model(model, params, batches, H.spec(), progress=False)
  with pytest.raises(TypeError, match="unknown method"):
    jq.ptq.runtime_model(model, "gptq")


def test_group_size_that_does_not_fit(tiny):
  model, params, batches = tiny       # hidden 24, intermediate 40: group 16 fits neither; 8 fits both
  with pytest.raises(ValueError, match=r"group size 16 does not divide .*use PerGroup\(axis=0, size=8\)"):
    jq.ptq.quantize_model(model, params, batches, jq.ptq.GPTQ(H.spec(4, 16)), progress=False)


def test_params_that_do_not_match(tiny):
  model, params, batches = tiny
  with pytest.raises(ValueError, match="lack the blocks"):
    jq.ptq.quantize_model(model, {"params": params}, batches, jq.ptq.RTN(H.spec()), progress=False)
  qparams, _ = jq.ptq.quantize_model(model, params, batches, jq.ptq.RTN(H.spec()), progress=False)
  with pytest.raises(ValueError, match="quantize float params only once"):
    jq.ptq.quantize_model(model, qparams, batches, jq.ptq.RTN(H.spec()), progress=False)
  with pytest.raises(TypeError, match="skip must be a sequence of glob"):
    jq.ptq.quantize_model(model, params, batches, jq.ptq.RTN(H.spec()), skip="layers_0/*", progress=False)


def test_method_configs_validate():
  s = H.spec()
  with pytest.raises(TypeError, match="spec must be a jq.QuantSpec"):
    jq.ptq.RTN("int4")
  with pytest.raises(ValueError, match="damp"):
    jq.ptq.GPTQ(s, damp=-0.1)
  with pytest.raises(ValueError, match="block_size"):
    jq.ptq.GPTQ(s, block_size=0)
  with pytest.raises(ValueError, match="static_groups=True needs a PerGroup"):
    jq.ptq.GPTQ(jq.QuantSpec(qtype=jq.INT4), static_groups=True)
  with pytest.raises(ValueError, match="grid"):
    jq.ptq.AWQ(s, grid=0)
  with pytest.raises(ValueError, match="differs from spec"):
    jq.ptq.AWQ(s, gptq=jq.ptq.GPTQ(H.spec(3)))
  with pytest.raises(ValueError, match="alpha"):
    jq.ptq.SmoothQuant(alpha=1.5)
  with pytest.raises(ValueError, match="act must be"):
    jq.ptq.SmoothQuant(act="per_channel")
  with pytest.raises(ValueError, match="threshold"):
    jq.ptq.LLMInt8(threshold=-1.0)
  with pytest.raises(ValueError, match="does not fit"):
    jq.ptq.RTN(jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerToken()))
  assert jq.ptq.GPTQ(s) == jq.ptq.GPTQ(s) and hash(jq.ptq.AWQ(s)) == hash(jq.ptq.AWQ(s))


def test_runtime_model_bad_input():
  with pytest.raises(TypeError, match="BlockwiseModel or a factory"):
    jq.ptq.runtime_model(3, jq.ptq.LLMInt8())
