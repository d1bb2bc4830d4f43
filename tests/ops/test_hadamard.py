"""Hadamard construction (float64 NumPy oracles) and the fast transform against the dense product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.ops import hadamard as hd

# every size the rotations of the shipped models use (SmolLM2 hidden / MLP / head, MiniLM hidden / MLP / head),
# plus each Paley construction and typical LLM widths
MODEL_SIZES = (576, 1536, 64, 384, 32)
SIZES = MODEL_SIZES + (1, 2, 12, 20, 28, 36, 44, 60, 96)
LARGE = (768, 3072, 4096, 14336 // 4)


def _np_fwht(x):
  """Textbook O(n log n) butterfly in float64 (pairs (i, i + h) in blocks of 2h)."""
  x = np.array(x, np.float64)
  n, h = x.shape[-1], 1
  while h < n:
    for i in range(0, n, 2 * h):
      a, b = x[..., i:i + h].copy(), x[..., i + h:i + 2 * h].copy()
      x[..., i:i + h], x[..., i + h:i + 2 * h] = a + b, a - b
    h *= 2
  return x


@pytest.mark.parametrize("n", SIZES + tuple(pytest.param(n, marks=pytest.mark.slow) for n in LARGE))
def test_matrix_is_orthogonal_pm1(n, rng):
  k = hd.hadamard_factor(n)
  assert n % k == 0 and (n // k) & (n // k - 1) == 0
  m = hd.hadamard_matrix(n)
  np.testing.assert_array_equal(np.abs(m * np.sqrt(n)).round(12), np.ones((n, n)))     # entries +-1/sqrt(n)
  np.testing.assert_allclose(m.T @ m, np.eye(n), atol=1e-12)
  s = hd.random_signs(n, int(rng.integers(1 << 30)))
  r = hd.hadamard_matrix(n, s)
  np.testing.assert_allclose(r @ r.T, np.eye(n), atol=1e-12)
  np.testing.assert_array_equal(r, s[:, None] * m)


@pytest.mark.parametrize("n", MODEL_SIZES)
def test_model_sizes_use_the_small_factor(n):
  assert hd.hadamard_factor(n) == {576: 36, 1536: 12, 64: 1, 384: 12, 32: 1}[n]


@pytest.mark.parametrize("n", (576, 1536, 64, 28) + tuple(pytest.param(n, marks=pytest.mark.slow)
                                                             for n in (1, 12, 20, 32, 36, 44, 60, 96, 384) + LARGE))
def test_transform_equals_dense_product(n, rng):
  x = rng.standard_normal((3, 2, n)).astype(np.float32)
  s = hd.random_signs(n, int(rng.integers(1 << 30)))
  ref = x.astype(np.float64) @ hd.hadamard_matrix(n, s)
  got = np.asarray(jax.jit(hd.hadamard_transform)(x, s))
  assert got.dtype == np.float32
  # float32: log2(n) butterfly levels + a K-term sum, entries of size |x|; bound ~ (log2 n + K) eps |x|_inf
  tol = (np.log2(n) + hd.hadamard_factor(n) + 2) * 1.2e-7 * np.abs(x).max() * 4
  np.testing.assert_allclose(got, ref, atol=tol, rtol=0)
  np.testing.assert_allclose(np.asarray(hd.hadamard_transform(x)), x @ hd.hadamard_matrix(n), atol=tol, rtol=0)


def test_power_of_two_matches_textbook_butterfly(rng):
  x = rng.standard_normal((4, 64))
  np.testing.assert_allclose(hd.hadamard_matrix(64) * 8, _np_fwht(np.eye(64)), atol=0)
  got = np.asarray(hd.hadamard_transform(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, _np_fwht(x) / 8, atol=2e-6)


def test_transform_is_its_own_inverse_up_to_transpose(rng):
  n = 576
  x = rng.standard_normal((5, n)).astype(np.float32)
  s = hd.random_signs(n, 3)
  y = np.asarray(hd.hadamard_transform(x, s), np.float64)
  np.testing.assert_allclose(y @ hd.hadamard_matrix(n, s).T, x, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_bf16_and_vmap(rng):
  x = rng.standard_normal((4, 384)).astype(np.float32)
  ref = x @ hd.hadamard_matrix(384)
  y16 = hd.hadamard_transform(jnp.asarray(x, jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), ref, atol=0.05 * np.abs(ref).max())
  yv = jax.vmap(hd.hadamard_transform)(x)
  np.testing.assert_allclose(np.asarray(yv), ref, atol=1e-5)


def test_nan_stays_nan():
  x = np.ones((2, 12), np.float32)
  x[0, 3] = np.nan
  y = np.asarray(hd.hadamard_transform(x))
  assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


@pytest.mark.parametrize("n", (3, 7, 18, 0, -4, 2.0, True, 11008 // 64 * 1024 // 2))
def test_unsupported_sizes_raise(n):
  with pytest.raises(ValueError, match="hadamard"):
    hd.hadamard_matrix(n)
  assert not hd.supported(n)


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"signs must have shape \(12,\)"):
    hd.hadamard_transform(np.ones((2, 12), np.float32), np.ones(6))
  with pytest.raises(TypeError, match="float"):
    hd.hadamard_transform(np.ones((2, 12), np.int32))
  with pytest.raises(ValueError, match="no Hadamard matrix of size 18"):
    hd.hadamard_transform(np.ones((2, 18), np.float32))
  with pytest.raises(TypeError, match="seed"):
    hd.random_signs(12, 1.5)
