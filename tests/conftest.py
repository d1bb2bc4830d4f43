"""Shared test configuration: deterministic seeds by default, fresh seeds on request, GPU marker handling.

Seeds: every test that takes the ``rng`` / ``key`` fixture gets a seed derived from its test id and a base.
The base is fixed (``0``) unless ``JQUANT_TEST_SEED`` says otherwise:

* unset or an integer: ``make test`` gives the same verdict on every run (the CI contract);
* ``random``: a fresh base from the OS (what ``make fuzz`` uses, over many runs).

A failing test prints its seed and the command that reproduces it. Hypothesis runs derandomized (a fixed example
sequence) unless ``JQUANT_TEST_SEED=random`` (then its ``fuzz`` profile draws fresh examples, more of them).
"""

import os
import re
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


def fuzz_examples(n: int) -> int:
  """Hypothesis ``max_examples`` for a test that draws ``n`` by default: ``n`` times ``JQUANT_FUZZ_RUNS`` under fuzz."""
  runs = os.environ.get("JQUANT_FUZZ_RUNS", "1").strip() if FUZZING else "1"
  if not runs.isdigit() or int(runs) < 1:
    raise pytest.UsageError(f"JQUANT_FUZZ_RUNS must be a positive integer, got {runs!r}.")
  return n * int(runs)

hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)
hypothesis.settings.load_profile("fuzz" if FUZZING else "ci")


_SWEEP_ID = re.compile(r"(?<=\[)seed\d+-|-?seed\d+(?=\])")


def test_seed(nodeid: str, offset: int = 0) -> int:
  """The seed of test ``nodeid`` under the current base (``offset``: the ``--seed-sweep`` draw, 0 by default).

  A sweep's parameter id (``[...-seed7]``) is stripped first, so draw 0 of a sweep is exactly the default run.
  """
  nodeid = _SWEEP_ID.sub("", nodeid).replace("[]", "")
  return (zlib.crc32(nodeid.encode()) + SEED_BASE + 7919 * offset) % (2**31)


def pytest_addoption(parser):
  parser.addoption("--seed-sweep", type=int, default=0, metavar="N",
                   help="run every test that takes rng/key/module_seed over N seeds (draw 0 = the default seed); "
                        "`make sweep` uses it to check a statistical test's failure rate")


def pytest_generate_tests(metafunc):
  n = metafunc.config.getoption("--seed-sweep")
  if n < 0:
    raise pytest.UsageError(f"--seed-sweep must be >= 0, got {n}")
  if n > 1 and "seed_offset" in metafunc.fixturenames:
    metafunc.parametrize("seed_offset", range(n), ids=[f"seed{i}" for i in range(n)], scope="module")


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
    offset = item.callspec.params.get("seed_offset", 0) if hasattr(item, "callspec") else 0
    report.sections.append(("jquant seed", f"seed {test_seed(item.nodeid, offset)} (base {SEED_BASE}); rerun with "
                                           f"JQUANT_TEST_SEED={SEED_BASE} pytest '{item.nodeid}'"
                                           + (f" --seed-sweep {item.config.getoption('--seed-sweep')}"
                                              if offset else "")))


@pytest.fixture(scope="module")
def seed_offset(request):
  """Which draw of a ``--seed-sweep`` this is (0 outside a sweep)."""
  return getattr(request, "param", 0)


@pytest.fixture
def rng(request, seed_offset):
  """A NumPy Generator seeded per test: crc32(test id) + base (fixed unless JQUANT_TEST_SEED is set)."""
  seed = test_seed(request.node.nodeid, seed_offset)
  request.node.user_properties.append(("seed", seed))
  return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def module_seed(request, seed_offset):
  """A seed for module-scoped fixtures (tiny models built once per module): crc32(module id) + base."""
  return test_seed(request.node.nodeid, seed_offset)


@pytest.fixture
def key(rng):
  """A jax PRNG key per test, drawn from ``rng``."""
  return jax.random.key(int(rng.integers(0, 2**31 - 1)))
