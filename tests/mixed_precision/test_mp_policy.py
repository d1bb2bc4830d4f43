"""Policy: casts only floating leaves; parsing and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant import mixed_precision as mp


def _tree(rng):
  return {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
          "h": jnp.asarray(rng.normal(size=(2,)), jnp.float16),
          "i": jnp.asarray(rng.integers(-5, 5, size=(3,)), jnp.int8),
          "m": jnp.asarray(rng.random(3) > 0.5),
          "n": None, "s": 3}


def test_casts_only_floating_leaves(rng):
  tree = _tree(rng)
  pol = mp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16, output_dtype=jnp.float16)
  for fn, dt in ((pol.cast_to_param, jnp.float32), (pol.cast_to_compute, jnp.bfloat16),
                 (pol.cast_to_output, jnp.float16)):
    out = fn(tree)
    assert out["w"].dtype == dt and out["h"].dtype == dt
    assert out["i"].dtype == jnp.int8 and out["m"].dtype == jnp.bool_
    assert out["n"] is None and out["s"] == 3
    np.testing.assert_array_equal(np.asarray(out["i"]), np.asarray(tree["i"]))
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), np.asarray(tree["w"], np.float64),
                               rtol=1e-2 if dt != jnp.float32 else 0)


def test_cast_under_jit(rng):
  tree = {k: v for k, v in _tree(rng).items() if k not in ("n", "s")}
  pol = mp.Policy(compute_dtype=jnp.bfloat16)
  out = jax.jit(pol.cast_to_compute)(tree)
  assert out["w"].dtype == jnp.bfloat16 and out["i"].dtype == jnp.int8


def test_policy_is_hashable_and_frozen():
  pol = mp.Policy(compute_dtype="bfloat16")
  assert pol == mp.Policy(compute_dtype=jnp.bfloat16) and hash(pol) == hash(mp.Policy(compute_dtype=jnp.bfloat16))
  with pytest.raises(AttributeError):
    pol.compute_dtype = jnp.float16


def test_from_string():
  pol = mp.Policy.from_string("params=float32, compute=bf16,output=f32")
  assert pol == mp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16, output_dtype=jnp.float32)
  assert mp.Policy.from_string("compute=half").compute_dtype == jnp.float16


@pytest.mark.parametrize("text", ["compute=int8", "weights=float32", "compute", "compute=f16,compute=f32"])
def test_from_string_bad_input(text):
  with pytest.raises(ValueError):
    mp.Policy.from_string(text)


def test_from_string_type_error():
  with pytest.raises(TypeError):
    mp.Policy.from_string(None)


@pytest.mark.parametrize("kwargs, exc", [(dict(compute_dtype=jnp.int8), ValueError),
                                          (dict(param_dtype="not_a_dtype"), TypeError),
                                          (dict(output_dtype=jnp.bool_), ValueError)])
def test_policy_bad_input(kwargs, exc):
  with pytest.raises(exc):
    mp.Policy(**kwargs)
