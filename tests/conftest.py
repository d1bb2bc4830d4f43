"""Shared test configuration: deterministic seeds by default, fresh seeds on request, GPU marker handling.

Seeds: every test that takes the ``rng`` / ``key`` fixture gets a seed derived from its test id and a base.
The base is fixed (``0``) unless ``JQUANT_TEST_SEED`` says otherwise:

* unset or an integer: ``make test`` gives the same verdict on every run (the CI contract);
* ``random``: a fresh base from the OS (what ``make fuzz`` uses, over many runs).

A failing test prints its seed and the command that reproduces it. Hypothesis runs derandomized (a fixed example
sequence) unless ``JQUANT_TEST_SEED=random`` (then its ``fuzz`` profile draws fresh examples, more of them).
"""

import os
import secrets
import zlib

import hypothesis
import jax
import numpy as np
import pytest

_DEFAULT_BASE = 0


def _seed_base() -> int:
  raw = os.environ.get("JQUANT_TEST_SEED", "").strip()
  if raw in ("", "fixed"):
    return _DEFAULT_BASE
  if raw == "random":
    return secrets.randbits(31)        # make fuzz: a fresh base per run
  try:
    return int(raw)
  except ValueError:
    raise pytest.UsageError(f"JQUANT_TEST_SEED must be an integer, 'fixed' or 'random', got {raw!r}.") from None


SEED_BASE = _seed_base()
FUZZING = os.environ.get("JQUANT_TEST_SEED", "").strip() == "random"

hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)
hypothesis.settings.load_profile("fuzz" if FUZZING else "ci")


def test_seed(nodeid: str) -> int:
  """The seed of test ``nodeid`` under the current base."""
  return (zlib.crc32(nodeid.encode()) + SEED_BASE) % (2**31)


def pytest_report_header(config):
  mode = "random (fuzz)" if FUZZING else "fixed"
  return f"jquant test seeds: base {SEED_BASE} ({mode}); reproduce with JQUANT_TEST_SEED={SEED_BASE}"


def pytest_collection_modifyitems(config, items):
  on_gpu = jax.default_backend() == "gpu"
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU (jax.default_backend() != 'gpu')")
  for item in items:
    if "gpu" in item.keywords and not on_gpu:
      item.add_marker(skip)
    if {"rng", "key", "module_seed"} & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("hypothesis"):
      item.add_marker(pytest.mark.randomized)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if report.when == "call" and report.failed and "rng" in getattr(item, "fixturenames", ()):
    report.sections.append(("jquant seed", f"seed {test_seed(item.nodeid)} (base {SEED_BASE}); rerun with "
                                           f"JQUANT_TEST_SEED={SEED_BASE} pytest '{item.nodeid}'"))


@pytest.fixture
def rng(request):
  """A NumPy Generator seeded per test: crc32(test id) + base (fixed unless JQUANT_TEST_SEED is set)."""
  seed = test_seed(request.node.nodeid)
  request.node.user_properties.append(("seed", seed))
  return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def module_seed(request):
  """A seed for module-scoped fixtures (tiny models built once per module): crc32(module id) + base."""
  return test_seed(request.node.nodeid)


@pytest.fixture
def key(rng):
  """A jax PRNG key per test, drawn from ``rng``."""
  return jax.random.key(int(rng.integers(0, 2**31 - 1)))
