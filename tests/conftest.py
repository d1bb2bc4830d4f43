"""Shared test configuration: fresh randomness per test, GPU marker handling."""

import os
import zlib

import jax
import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() != "gpu":
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (jax.default_backend() != 'gpu')")
    for item in items:
      if "gpu" in item.keywords:
        item.add_marker(skip)


@pytest.fixture
def rng(request):
  """A NumPy Generator seeded freshly per test (test id + JQUANT_TEST_SEED, default: time-based)."""
  base = int(os.environ.get("JQUANT_TEST_SEED", str(np.random.SeedSequence().entropy % (2**31))))
  seed = (zlib.crc32(request.node.nodeid.encode()) + base) % (2**31)
  request.node.user_properties.append(("seed", seed))
  return np.random.default_rng(seed)


@pytest.fixture
def key(rng):
  """A fresh jax PRNG key per test."""
  return jax.random.key(int(rng.integers(0, 2**31 - 1)))
