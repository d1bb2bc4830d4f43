"""Sub-byte packing: exact round trips, documented nibble order, odd shapes."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jquant.core import packing
from tests.conftest import fuzz_examples


def test_nibble_order_is_low_then_high():
  v = jnp.asarray([[1, -2, 7, -8]], jnp.int8)
  p = np.asarray(packing.pack(v, bits=4))
  assert p.tolist() == [[(1 & 15) | ((-2 & 15) << 4), (7 & 15) | ((-8 & 15) << 4)]]


@settings(max_examples=fuzz_examples(30), deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 9), bits=st.sampled_from([2, 4]), signed=st.booleans(),
       axis=st.sampled_from([0, 1, -1]), seed=st.integers(0, 2**31 - 1))
def test_round_trip_odd_shapes(rows, cols, bits, signed, axis, seed):
  rng = np.random.default_rng(seed)
  per = 8 // bits
  shape = [rows, cols]
  shape[axis] *= per
  lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2 ** bits)
  v = jnp.asarray(rng.integers(lo, hi, shape), jnp.int8)
  p = packing.pack(v, bits=bits, axis=axis)
  assert p.dtype == jnp.uint8 and p.shape[axis % 2] == shape[axis % 2] // per
  np.testing.assert_array_equal(np.asarray(packing.unpack(p, bits=bits, axis=axis, signed=signed)), np.asarray(v))


def test_int4_dtype_round_trip(rng):
  v = jnp.asarray(rng.integers(-8, 8, (6, 10)), jnp.int4)
  back = packing.unpack(packing.pack(v, axis=0), axis=0, dtype=jnp.int4)
  np.testing.assert_array_equal(np.asarray(back.astype(jnp.int8)), np.asarray(v.astype(jnp.int8)))


def test_odd_length_needs_padding(rng):
  v = jnp.asarray(rng.integers(-8, 8, (3, 5)), jnp.int8)
  with pytest.raises(ValueError, match="pad it first"):
    packing.pack(v, axis=1)
  padded = packing.pad_to_multiple(v, 2, axis=1)
  assert padded.shape == (3, 6)
  back = packing.unpack(packing.pack(padded, axis=1), axis=1)[:, :5]
  np.testing.assert_array_equal(np.asarray(back), np.asarray(v))


def test_bad_inputs():
  with pytest.raises(TypeError, match="integer"):
    packing.pack(jnp.ones((2, 2), jnp.float32))
  with pytest.raises(ValueError, match="bits=3"):
    packing.pack(jnp.ones((2, 2), jnp.int8), bits=3)
  with pytest.raises(TypeError, match="uint8"):
    packing.unpack(jnp.ones((2, 2), jnp.int8))
