"""Issue 11, item 8: concrete array values are validated like Python numbers; invalid granularity and spec
arguments are TypeError/ValueError (never silently coerced); empty arrays get a clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jquant as jq
from jquant import mixed_precision as mp


@pytest.mark.parametrize("field,value,err,msg", [
    ("scale", jnp.asarray(jnp.inf), ValueError, r"DynamicLossScale.scale=inf: must be a finite number > 0"),
    ("scale", jnp.asarray(jnp.nan), ValueError, r"scale=nan: must be a finite number > 0"),
    ("scale", jnp.asarray(-2.0), ValueError, r"scale=-2.0: must be a finite number > 0"),
    ("scale", np.float32(0.0), ValueError, r"scale=0.0"),
    ("scale", jnp.ones((2,)), ValueError, r"scale must be a scalar, got shape \(2,\)"),
    ("scale", jnp.asarray(True), TypeError, r"scale must be a number"),
    ("scale", "1024", TypeError, r"scale must be a number or a scalar array, got str"),
    ("period", jnp.asarray(0), ValueError, r"period=0: must be an int >= 1"),
    ("period", jnp.asarray(2.5), ValueError, r"period=2.5: must be an int >= 1"),
    ("factor", jnp.asarray(1.0), ValueError, r"factor=1.0: must be a finite number > 1"),
    ("min_scale", jnp.asarray(jnp.inf), ValueError, r"min_scale=inf"),
    ("good_steps", jnp.asarray(-1), ValueError, r"good_steps=-1: must be an int >= 0"),
    ("scale", 1 + 2j, TypeError, r"scale must be a real number"),
])
def test_dynamic_loss_scale_validates_concrete_arrays(field, value, err, msg):
  with pytest.raises(err, match=msg):
    mp.DynamicLossScale(**{field: value})


@pytest.mark.parametrize("value,msg", [(jnp.asarray(jnp.inf), r"scale=inf"), (jnp.asarray(0.0), r"scale=0.0")])
def test_static_loss_scale_validates_concrete_arrays(value, msg):
  with pytest.raises(ValueError, match=msg):
    mp.StaticLossScale(scale=value)


def test_valid_concrete_arrays_are_accepted_and_jit_round_trips_skip_no_state():
  ls = mp.DynamicLossScale(scale=jnp.asarray(1024.0), period=jnp.asarray(3), factor=jnp.asarray(2.0))
  assert ls.scale.dtype == jnp.float32 and ls.period.dtype == jnp.int32 and float(ls.scale) == 1024.0
  out = jax.jit(lambda s: s.adjust(jnp.asarray(False)))(ls)
  assert float(out.scale) == 512.0
  # rebuilding a pytree (zeros_like, tree_map) is not a construction: no checks, no host sync
  zeros = jax.tree.map(jnp.zeros_like, ls)
  assert float(zeros.scale) == 0.0


def test_skip_keeps_state_bit_identical():
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  tx = mp.loss_scaled(optax.adam(1e-2), mp.DynamicLossScale(scale=jnp.asarray(256.0)))
  state = tx.init(params)
  g = {"w": jnp.full((2, 3), jnp.nan)}
  upd, new = jax.jit(tx.update)(g, state, params)
  np.testing.assert_array_equal(np.asarray(optax.apply_updates(params, upd)["w"]), np.asarray(params["w"]))
  for a, b in zip(jax.tree.leaves(new.inner_state), jax.tree.leaves(state.inner_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


GRANULARITY_ERRORS = [
    (lambda: jq.PerChannel(axis=1.5), TypeError, r"PerChannel\(axis=1.5\): axis must be an int"),
    (lambda: jq.PerChannel(axis="0"), TypeError, r"axis must be an int axis"),
    (lambda: jq.PerChannel(axis=True), TypeError, r"axis must be an int axis"),
    (lambda: jq.PerChannel(axis=0, batch_axes=0), TypeError, r"write batch_axes=\(0,\)"),
    (lambda: jq.PerChannel(axis=0, batch_axes=(1.0,)), TypeError, r"tuple of int axes"),
    (lambda: jq.PerTensor(batch_axes=(0, 0)), ValueError, r"lists an axis twice"),
    (lambda: jq.PerGroup(axis=0, size=64.0), TypeError, r"size must be an int"),
    (lambda: jq.PerGroup(axis=0, size=0), ValueError, r"size must be a positive int"),
    (lambda: jq.PerGroup(axis=0.0, size=2), TypeError, r"PerGroup\(axis=0.0\): axis must be an int"),
    (lambda: jq.PerBlock((2, 2.0)), ValueError, r"shape must be a non-empty tuple of positive ints"),
    (lambda: jq.PerBlock(4), ValueError, r"shape must be a non-empty tuple"),
    (lambda: jq.QuantSpec(qtype=jq.INT8, symmetric="no"), TypeError, r"symmetric must be True or False"),
    (lambda: jq.QuantSpec(qtype=jq.INT8, symmetric=1), TypeError, r"symmetric must be True or False, got int"),
    (lambda: jq.QuantSpec(qtype=jq.INT8, double_quant="yes"), TypeError, r"double_quant must be True or False"),
    (lambda: jq.QuantSpec(qtype=jq.INT8, stochastic_rounding=None), TypeError, r"stochastic_rounding must be"),
    (lambda: jq.QuantSpec(qtype=jq.INT8, double_quant_block=64.0), TypeError, r"double_quant_block=64.0\) must be an int"),
    (lambda: jq.QuantSpec(qtype=jq.INT8, scale_dtype=jnp.float16), TypeError, r"scale_dtype=.* must be one of the strings"),
    (lambda: jq.QuantSpec(qtype="int8"), TypeError, r"expected a jq QType"),
    (lambda: jq.QuantRule(r".*", None, batch_axes=0), TypeError, r"batch_axes must be a tuple of int axes"),
    (lambda: jq.QuantConfig(rules=[jq.QuantRule(".*", None)], skip=".*norm.*"), TypeError, r"Write skip=\['\.\*norm\.\*'\]"),
    (lambda: jq.QuantConfig(rules=jq.QuantRule(".*", None)), TypeError, r"write rules=\[rule\]"),
    # without 64-bit jax a float64 policy would silently compute in float32
    (lambda: jq.mixed_precision.Policy(param_dtype=jnp.float64), ValueError, r"param_dtype=float64 needs 64-bit jax"),
    (lambda: jq.mixed_precision.Policy.from_string("params=float32,compute=float64"), ValueError,
     r"compute_dtype=float64 needs 64-bit jax"),
    (lambda: jq.mixed_precision.cast_floating({"w": jnp.ones(2)}, "float64"), ValueError, r"needs 64-bit jax"),
]


@pytest.mark.parametrize("make,err,msg", GRANULARITY_ERRORS)
def test_invalid_arguments_are_rejected(make, err, msg):
  with pytest.raises(err, match=msg):
    make()


@pytest.mark.parametrize("gran,shape,msg", [
    (jq.PerChannel(axis=1, batch_axes=(5,)), (4, 4), r"axis=5 is out of range for an array of rank 2"),
    (jq.PerChannel(axis=1, batch_axes=(1,)), (4, 4), r"axis 1 is also a batch axis"),
    (jq.PerGroup(axis=0, size=2, batch_axes=(0,)), (4, 4), r"axis 0 is also a batch axis"),
    (jq.PerTensor(batch_axes=(-3,)), (4, 4), r"axis=-3 is out of range"),
])
def test_granularity_axes_checked_against_the_array(gran, shape, msg):
  with pytest.raises(ValueError, match=msg):
    jq.quantize(jnp.ones(shape), jq.QuantSpec(qtype=jq.INT8, granularity=gran))


def test_rule_batch_axes_out_of_range_is_not_wrapped(rng):
  w = jnp.asarray(rng.normal(size=(2, 4, 4)).astype(np.float32))
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*", jq.QuantSpec(qtype=jq.INT8), batch_axes=(5,))])
  with pytest.raises(ValueError, match=r"batch_axes=\(5,\)\): axis 5 is out of range for a leaf of rank 3"):
    jq.quantize_params({"w": w}, cfg)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0,), (2, 0, 3)])
@pytest.mark.parametrize("gran", [jq.PerTensor(), jq.PerChannel(axis=-1), jq.PerToken()])
def test_empty_arrays_get_a_clear_error(shape, gran):
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=gran)
  with pytest.raises(ValueError, match=r"has no elements .*nothing to quantize"):
    jq.quantize(jnp.ones(shape), spec)
  with pytest.raises(ValueError, match=r"has no elements"):
    jq.fake_quant(jnp.ones(shape), spec)


def test_empty_leaf_in_quantize_params_names_the_leaf():
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*", jq.QuantSpec(qtype=jq.INT8))])
  with pytest.raises(ValueError, match=r"matched 'a/kernel' of shape \(0, 8\).*no elements"):
    jq.quantize_params({"a": {"kernel": jnp.ones((0, 8))}}, cfg)
  q, rep = jq.quantize_params({"a": {"kernel": jnp.ones((0, 8))}}, cfg, skip_unsupported=True, return_report=True)
  assert [e.status for e in rep.entries] == ["unsupported"]


def test_float64_policy_works_where_64_bit_jax_is_on():
  with jax.enable_x64(True):
    policy = jq.mixed_precision.Policy(param_dtype=jnp.float64)
    out = policy.cast_to_param({"w": jnp.full((3,), 1 / 3, jnp.float32), "n": jnp.arange(3)})
    assert out["w"].dtype == jnp.float64 and out["n"].dtype == jnp.arange(3).dtype
    np.testing.assert_array_equal(np.asarray(out["w"]), np.float32(1 / 3).astype(np.float64))
