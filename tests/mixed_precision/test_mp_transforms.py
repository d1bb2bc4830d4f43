"""loss_scaled(optax): skipping non-finite steps, fp16 underflow rescue, fp32 master weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jquant import mixed_precision as mp


def _bits(tree):
  return [np.atleast_1d(np.asarray(x)).view(np.uint8).copy() for x in jax.tree.leaves(tree)]


def _assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_bits(a), _bits(b)):
    np.testing.assert_array_equal(x, y)


def _params(rng):
  w = rng.normal(size=(4, 3)).astype(np.float32)
  w[0, 0] = -0.0  # -0.0 + (+0.0) would flip the sign bit; the skipped step must not
  return {"w": jnp.asarray(w), "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("grad_dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_nonfinite_step_is_skipped_bit_identically(rng, bad, grad_dtype):
  params = _params(rng)
  tx = mp.loss_scaled(optax.adam(1e-2), mp.DynamicLossScale(scale=2.0**10, period=5))
  state = tx.init(params)
  good = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), grad_dtype), params)
  update = jax.jit(tx.update)
  upd, state = update(good, state, params)  # one real step so the adam moments are non-trivial
  params = optax.apply_updates(params, upd)
  params = jax.tree.map(lambda p: p.at[0].set(-0.0) if p.ndim == 1 else p, params)
  before_params, before_state = params, state
  bad_grads = {"w": good["w"].at[1, 2].set(bad), "b": good["b"]}
  upd, state = update(bad_grads, state, params)
  new_params = optax.apply_updates(params, upd)
  _assert_bit_identical(new_params, before_params)
  _assert_bit_identical(state.inner_state, before_state.inner_state)
  assert float(state.loss_scale.scale) == 2.0**9 and int(state.loss_scale.good_steps) == 0
  assert not bool(state.grads_finite)


def test_finite_step_matches_inner_on_unscaled_grads(rng):
  params = _params(rng)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  scale = 2.0**8
  tx = mp.loss_scaled(optax.sgd(0.1, momentum=0.9), mp.StaticLossScale(scale))
  ref = optax.sgd(0.1, momentum=0.9)
  upd, state = jax.jit(tx.update)(jax.tree.map(lambda g: g * scale, grads), tx.init(params), params)
  want, want_state = ref.update(grads, ref.init(params), params)
  chex.assert_trees_all_close(upd, want, rtol=1e-6)
  chex.assert_trees_all_close(state.inner_state, want_state, rtol=1e-6)
  assert bool(state.grads_finite) and float(mp.current_loss_scale(state)) == scale


def _underflow_problem(rng):
  x = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  w_true = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  policy = mp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.float16, output_dtype=jnp.float32)

  def loss_fn(params, x):
    p, xc = policy.cast_to_compute((params, x))
    err = xc @ p["w"] - policy.cast_to_compute(x @ w_true)
    # A tiny loss weight: its fp16 cotangent / 128 elements falls below fp16's smallest subnormal.
    return 1e-6 * policy.cast_to_output(jnp.mean(jnp.square(err)))

  params = {"w": jnp.asarray(rng.normal(size=(8, 4)) * 0.1, jnp.float32)}
  return policy, loss_fn, params, x


def _train(loss_scale, rng, steps=60):
  policy, loss_fn, params, x = _underflow_problem(rng)
  tx = mp.loss_scaled(optax.adam(5e-2), loss_scale)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    scale = mp.current_loss_scale(state)
    grads = jax.grad(lambda p: loss_fn(p, x) * scale)(params)
    assert grads["w"].dtype == jnp.float32  # fp32 master weights get fp32 grads
    upd, state = tx.update(grads, state, params)
    return optax.apply_updates(params, upd), state, grads

  first = float(loss_fn(params, x))
  nonzero = []
  for _ in range(steps):
    params, state, grads = step(params, state)
    nonzero.append(int(jnp.count_nonzero(grads["w"])))
  assert params["w"].dtype == policy.param_dtype
  return first, float(loss_fn(params, x)), nonzero, state


def test_fp16_underflow_without_scaling_does_not_train(rng):
  first, last, nonzero, _ = _train(mp.NoOpLossScale(), rng)
  assert max(nonzero) == 0 and last == first


def test_fp16_underflow_rescued_by_dynamic_loss_scale(rng):
  first, last, nonzero, state = _train(mp.DynamicLossScale(scale=2.0**15, period=10), rng)
  assert min(nonzero) > 0
  assert last < 0.2 * first
  assert float(mp.current_loss_scale(state)) >= 2.0**15  # no overflow here, so the scale only grew


def test_dynamic_scale_recovers_from_overflow(rng):
  # 2**40 overflows fp16 in the backward pass; the scale must shrink until steps succeed, then train.
  first, last, nonzero, state = _train(mp.DynamicLossScale(scale=2.0**40, period=1000), rng, steps=80)
  assert float(mp.current_loss_scale(state)) < 2.0**40
  assert last < 0.5 * first


def test_works_inside_chain_and_with_extra_args(rng):
  params = _params(rng)
  tx = optax.chain(optax.clip_by_global_norm(1.0), mp.loss_scaled(optax.sgd(0.1), mp.DynamicLossScale()))
  state = tx.init(params)
  assert float(mp.current_loss_scale(state)) == 2.0**15
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 2.0**15, params)
  _, state = jax.jit(tx.update)(grads, state, params)
  assert int(mp.find_loss_scale(state).good_steps) == 1
  inner = optax.with_extra_args_support(optax.sgd(0.1))
  tx2 = mp.loss_scaled(inner, mp.NoOpLossScale())
  tx2.update(grads, tx2.init(params), params, value=jnp.ones(()))


def test_update_traces_once(rng):
  params = _params(rng)
  tx = mp.loss_scaled(optax.adam(1e-3), mp.DynamicLossScale(period=2))
  chex.clear_trace_counter()
  update = jax.jit(chex.assert_max_traces(tx.update, n=1))
  state = tx.init(params)
  for i in range(4):
    grads = jax.tree.map(lambda p: jnp.full_like(p, np.inf if i == 1 else 1.0), params)
    _, state = update(grads, state, params)
  chex.assert_trees_all_equal_dtypes(state, tx.init(params))


def test_bad_input():
  with pytest.raises(TypeError, match="loss_scale"):
    mp.loss_scaled(optax.sgd(0.1), 2.0**15)
  with pytest.raises(TypeError, match="GradientTransformation"):
    mp.loss_scaled("sgd", mp.NoOpLossScale())
  tx = mp.loss_scaled(optax.sgd(0.1), mp.NoOpLossScale())
  with pytest.raises(TypeError, match="init"):
    tx.update({"a": jnp.ones(2)}, optax.sgd(0.1).init({"a": jnp.ones(2)}))
  with pytest.raises(ValueError, match="found 0"):
    mp.current_loss_scale(optax.sgd(0.1).init({"a": jnp.ones(2)}))
  twice = optax.chain(mp.loss_scaled(optax.sgd(0.1), mp.NoOpLossScale()),
                      mp.loss_scaled(optax.sgd(0.1), mp.NoOpLossScale()))
  with pytest.raises(ValueError, match="found 2"):
    mp.current_loss_scale(twice.init({"a": jnp.ones(2)}))
