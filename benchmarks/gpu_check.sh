#!/usr/bin/env bash
# One-call GPU check (issue 15): the GPU tests (`pytest -m gpu`) and the Pallas kernel table (benchmarks/kernels.py:
# int4 / int8 / fp8 matmul kernels vs XLA's bf16, dequantize-then-dot and native 8-bit dots), written as a section
# ready to paste into benchmarks/RESULTS.md, with the card's name from nvidia-smi. Sized for < 8 minutes on an
# H100/H200 with the CUDA build of jax 0.11.2 (see /work/shared/KERNELS.md).
#
#   benchmarks/gpu_check.sh [--python PY] [--out DIR] [--iters N] [--test-timeout S] [--bench-timeout S] [--allow-cpu]
#
#   --python PY         interpreter with jquant's dependencies and CUDA jax (default: .venv/bin/python, else python3)
#   --out DIR           where to write gpu_check.md, pytest.log, kernels.md (default: $OUT if set, else /tmp/gpu_check)
#   --iters N           timed calls per kernel and baseline (default 50)
#   --test-timeout S    wall-clock limit of the pytest step (default 200)
#   --bench-timeout S   wall-clock limit of the kernel table step (default 260)
#   --allow-cpu         run even when jax has no GPU (checks the script: the tests skip, the table has XLA rows only)
#
# Exit status: 0 when both steps ran and the tests passed; 1 for test failures or a failed/timed-out step; 2 for bad
# arguments or no GPU (without --allow-cpu). The section is written even when a step fails, saying which.
set -u -o pipefail

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=""
OUTDIR="${OUT:-/tmp/gpu_check}"
ITERS=50
TEST_TIMEOUT=200
BENCH_TIMEOUT=260
ALLOW_CPU=0

is_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
need_val() { if [[ $# -lt 2 || -z "$2" ]]; then echo "gpu_check.sh: $1 needs a value (see --help)" >&2; exit 2; fi; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) need_val "$@"; PY="$2"; shift 2 ;;
    --out) need_val "$@"; OUTDIR="$2"; shift 2 ;;
    --iters) need_val "$@"; ITERS="$2"; shift 2 ;;
    --test-timeout) need_val "$@"; TEST_TIMEOUT="$2"; shift 2 ;;
    --bench-timeout) need_val "$@"; BENCH_TIMEOUT="$2"; shift 2 ;;
    --allow-cpu) ALLOW_CPU=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for pair in "--iters:$ITERS" "--test-timeout:$TEST_TIMEOUT" "--bench-timeout:$BENCH_TIMEOUT"; do
  if ! is_int "${pair#*:}"; then
    echo "gpu_check.sh: ${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2; exit 2
  fi
done
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
fi
if [[ -z "$PY" ]] || ! "$PY" -c "import jax, jquant" >/dev/null 2>&1; then
  echo "gpu_check.sh: '$PY' cannot import jax and jquant; pass --python with the project's interpreter" >&2; exit 2
fi
mkdir -p "$OUTDIR" || { echo "gpu_check.sh: cannot create --out '$OUTDIR'" >&2; exit 2; }
cd "$ROOT"

BACKEND="$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null || echo unknown)"
if [[ "$BACKEND" != "gpu" && "$ALLOW_CPU" != 1 ]]; then
  echo "gpu_check.sh: jax's backend is '$BACKEND', not 'gpu' (install the CUDA build: pip install 'jax[cuda12]==0.11.2'), or pass --allow-cpu to check the script" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  CARD="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
else
  CARD=""
fi
[[ -n "$CARD" ]] || CARD="no nvidia-smi (backend: $BACKEND)"
JAXV="$("$PY" -c "import jax, jaxlib; print(f'jax {jax.__version__}, jaxlib {jaxlib.__version__}')")"
STAMP="$(date -u '+%Y-%m-%d %H:%M UTC')"
LOAD="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"
T0=$SECONDS
echo "gpu_check: $CARD; $JAXV; backend $BACKEND; output in $OUTDIR"

# 1. GPU tests (skipped on CPU by their marker's conftest hook).
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests >"$OUTDIR/pytest.log" 2>&1
TEST_RC=$?
TEST_SUMMARY="$(grep -E '(passed|failed|skipped|error|no tests ran)' "$OUTDIR/pytest.log" | tail -n1)"
[[ $TEST_RC -eq 124 ]] && TEST_SUMMARY="timed out after ${TEST_TIMEOUT}s ($TEST_SUMMARY)"
[[ -n "$TEST_SUMMARY" ]] || TEST_SUMMARY="no summary line (rc $TEST_RC; see pytest.log)"
echo "gpu tests: $TEST_SUMMARY ($((SECONDS - T0)) s)"

# 2. Kernel table.
T1=$SECONDS
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/kernels.py --iters "$ITERS" --out "$OUTDIR/kernels.md" >"$OUTDIR/kernels.log" 2>&1
BENCH_RC=$?
if [[ $BENCH_RC -eq 0 && -s "$OUTDIR/kernels.md" ]]; then
  TABLE="$(cat "$OUTDIR/kernels.md")"
elif [[ $BENCH_RC -eq 124 ]]; then
  TABLE="Kernel table: timed out after ${BENCH_TIMEOUT}s (see kernels.log; raise --bench-timeout or lower --iters)."
else
  TABLE="Kernel table: failed (rc $BENCH_RC): $(tail -n1 "$OUTDIR/kernels.log")"
fi
echo "kernel table: rc $BENCH_RC ($((SECONDS - T1)) s)"

{
  echo "## Pallas kernels on $CARD (\`benchmarks/gpu_check.sh\`, $STAMP)"
  echo "$JAXV, backend $BACKEND, host load average $LOAD, iters $ITERS, total $((SECONDS - T0)) s."
  echo "GPU tests (\`pytest -m gpu\`): $TEST_SUMMARY."
  echo
  echo "$TABLE"
} >"$OUTDIR/gpu_check.md"
echo "wrote $OUTDIR/gpu_check.md (paste it into benchmarks/RESULTS.md)"
cat "$OUTDIR/gpu_check.md"

if [[ $TEST_RC -ne 0 && $TEST_RC -ne 5 ]] || [[ $BENCH_RC -ne 0 ]]; then exit 1; fi
exit 0
