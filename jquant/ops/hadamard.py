"""Hadamard rotations: dense matrices for offline weight rotations and a fast transform for online ones.

Sizes: ``n = K * 2**m`` where ``K`` is 1 or the order of a Paley Hadamard matrix (Paley I: ``q + 1`` for a prime
``q = 3 mod 4``, e.g. 12, 20, 44; Paley II: ``2 (q + 1)`` for a prime ``q = 1 mod 4``, e.g. 12, 28, 36, 60). The
matrix is ``H_n = kron(H_K, H_{2**m}) / sqrt(n)`` (``H_{2**m}`` the Sylvester matrix), orthogonal. SmolLM2's 576 is
36 x 16, its MLP width 1536 = 12 x 128; MiniLM's 384 = 12 x 32. The smallest ``K`` that fits is used, so most of
the work is the power-of-two butterfly.

A randomized Hadamard rotation (QuaRot) is ``diag(signs) @ H_n`` with seeded random signs (``random_signs``).

    R = hadamard_matrix(576, random_signs(576, seed=0))     # float64 NumPy (n, n), R.T @ R = I
    y = hadamard_transform(x, signs)                         # x @ R along the last axis, O(n log n), jittable
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["hadamard_factor", "hadamard_matrix", "hadamard_transform", "random_signs", "supported"]


_MAX_K = 256     # the dense (K, K) factor costs O(n K) per vector: keep the transform close to O(n log n)


def _is_prime(q: int) -> bool:
  return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> np.ndarray:
  """(q, q) matrix Q[i, j] = chi(j - i) with chi the quadratic character mod the prime q."""
  squares = {(x * x) % q for x in range(1, q)}
  chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)], np.int64)
  idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
  return chi[idx]


@functools.lru_cache(maxsize=None)
def _paley(k: int) -> np.ndarray | None:
  """An unnormalized (k, k) +-1 Hadamard matrix of Paley type, or None when k is not a Paley order."""
  if k == 1:
    return np.ones((1, 1), np.int64)
  q = k - 1                          # Paley I: q = 3 mod 4, Q skew-symmetric
  if _is_prime(q) and q % 4 == 3:
    s = np.zeros((k, k), np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return s + np.eye(k, dtype=np.int64)
  if k % 2 == 0:                     # Paley II: q = 1 mod 4, Q symmetric, C a symmetric conference matrix
    q = k // 2 - 1
    if _is_prime(q) and q % 4 == 1:
      c = np.zeros((q + 1, q + 1), np.int64)
      c[0, 1:] = 1
      c[1:, 0] = 1
      c[1:, 1:] = _jacobsthal(q)
      return (np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(q + 1, dtype=np.int64),
                                                                   np.array([[1, -1], [-1, -1]])))
  return None


def hadamard_factor(n: int) -> int:
  """The small factor ``K`` of ``n = K * 2**m`` (1 for powers of two). Raises ValueError for unsupported sizes."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"hadamard: size must be a positive int, got {n!r}.")
  n = int(n)
  k = n & -n              # the largest power of two dividing n
  odd = n // k
  for b in range(k.bit_length()):
    cand = odd << b
    if cand > _MAX_K:
      break
    if _paley(cand) is not None:
      return cand
  raise ValueError(f"hadamard: no Hadamard matrix of size {n} = {odd} x 2^{k.bit_length() - 1}: supported sizes are "
                   f"K x 2^m with K = 1 or a Paley order <= {_MAX_K} (12, 20, 24, 28, 36, 44, 48, 60, ...) dividing n "
                   "(e.g. 384 = 12 x 32, 576 = 36 x 16, 1536 = 12 x 128).")


def supported(n: int) -> bool:
  """Whether `hadamard_matrix(n)` exists."""
  try:
    hadamard_factor(n)
  except ValueError:
    return False
  return True


def random_signs(n: int, seed: int = 0) -> np.ndarray:
  """(n,) float64 random +-1 (NumPy ``default_rng(seed)``): the diagonal of a randomized Hadamard rotation."""
  hadamard_factor(n)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"random_signs: seed must be an int, got {seed!r}.")
  return np.where(np.random.default_rng(int(seed)).random(int(n)) < 0.5, -1.0, 1.0)


def _check_signs(signs, n: int) -> None:
  if signs is None:
    return
  s = np.asarray(signs) if not isinstance(signs, jax.core.Tracer) else signs
  if s.shape != (n,):
    raise ValueError(f"hadamard: signs must have shape ({n},), got {tuple(s.shape)}.")


def hadamard_matrix(n: int, signs=None) -> np.ndarray:
  """The orthogonal (n, n) float64 matrix ``diag(signs) @ kron(H_K, H_{2**m}) / sqrt(n)``.

  Args:
    n: size (see the module docstring for the supported sizes).
    signs: optional (n,) +-1 diagonal (`random_signs`); None: the plain Hadamard matrix.
  """
  k = hadamard_factor(n)
  _check_signs(signs, n)
  h = np.ones((1, 1))
  while h.shape[0] < n // k:
    h = np.block([[h, h], [h, -h]])
  m = np.kron(_paley(k).astype(np.float64), h) / np.sqrt(n)
  return m if signs is None else np.asarray(signs, np.float64)[:, None] * m


def _fwht(x: jax.Array) -> jax.Array:
  """Unnormalized Sylvester Walsh-Hadamard transform of the last axis (a power of two): ``x @ H_{2**m}``."""
  p = x.shape[-1]
  lead = x.shape[:-1]
  h = 1
  while h < p:
    y = x.reshape(*lead, p // (2 * h), 2, h)
    a, b = y[..., 0, :], y[..., 1, :]
    x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, p)
    h *= 2
  return x


def hadamard_transform(x: jax.Array, signs=None) -> jax.Array:
  """``x @ hadamard_matrix(n, signs)`` along the last axis, without forming the matrix.

  O(n log n): the ``2**m`` butterfly on ``x`` viewed as (..., K, 2**m), then the small (K, K) Paley matrix on the
  other axis. Works under ``jit`` / ``vmap``; the result has x's dtype (float32 accumulation for lower precisions).

  Args:
    x: (..., n) float array.
    signs: optional (n,) +-1 diagonal applied first (a randomized Hadamard rotation).
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"hadamard_transform: x must be a float array, got dtype {x.dtype}.")
  if x.ndim < 1:
    raise ValueError("hadamard_transform: x must have at least one axis (the rotated features).")
  n = x.shape[-1]
  k = hadamard_factor(n)
  _check_signs(signs, n)
  dtype = x.dtype
  y = x.astype(jnp.promote_types(dtype, jnp.float32))
  if signs is not None:
    y = y * jnp.asarray(signs, y.dtype)
  lead = y.shape[:-1]
  y = _fwht(y.reshape(*lead, k, n // k))
  if k > 1:     # y[.., c, l] = sum_i H_K[i, c] y[.., i, l]
    y = jnp.einsum("...il,ic->...cl", y, jnp.asarray(_paley(k), y.dtype), precision=jax.lax.Precision.HIGHEST)
  return (y.reshape(*lead, n) / np.sqrt(n).astype(y.dtype)).astype(dtype)
