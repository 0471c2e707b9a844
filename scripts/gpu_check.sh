#!/usr/bin/env bash
# The GPU check of issues 20 and 29 in one command: build the CUDA extension, run the GPU tests,
# HyenaDNA end to end on the GPU, Evo 2 on the GPU, variant windows on the GPU, the GPU benchmark
# and a compute-sanitizer smoke run, each stage time-boxed so that one hang cannot eat the
# budget; a failed stage is logged and the next runs.
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#
# Writes under $OUT (8 files, the device tool's limit): gpu_check.log (every stage's output),
# build.log (pip's build of the extension), pytest_kernels.xml and pytest_model.xml (junit),
# bench_gpu.json, model_gpu.json, evo2_gpu.json + variants_gpu.json (folded into summary.json and
# removed when it is written), summary.json (stages, test counts, checks, headline figures).
# Exit status 0 when every required stage passed. Needs python3 with CUDA torch, numpy, scipy,
# pytest, safetensors (no ray, pysam, deepspeed, duckdb) and nvcc; reaches no package index.
# Without a CUDA device (a dry run) it installs genomeconv without the extension, runs the same
# stages at small sizes on the CPU, skips the GPU-only parts and says so.
#
# Environment: GPU_CHECK_BUDGET_S (default 480: the whole run, 8 min; 3x the budget and
# each stage's limit on a dry run), PYTHON (python3),
# GENOMECONV_CUDA_ARCHS (default 90a: Hopper SASS only, half the compile of "80;90a"),
# GPU_CHECK_REQUIRE_GPU=1 (fail at once when no CUDA device is visible), GPU_CHECK_ONLY="build
# pytest-kernels" (run only these stages, e.g. a short rerun after a fix; others are recorded as
# not selected). Stages: environment build pytest-kernels pytest-model model evo2 variants bench
# sanitizer.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
STAGES=$(mktemp)
trap 'rm -f "$STAGES"' EXIT
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
: >"$LOG"

log() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# stage NAME REQUIRED CAP RESERVE CMD...: CMD under `timeout`, at most CAP seconds and never
# into the last RESERVE seconds of the budget (kept for the stages after it).
stage() {
  local name=$1 required=$2 cap=$3 reserve=$4
  shift 4
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    log "$name: not selected (GPU_CHECK_ONLY=$GPU_CHECK_ONLY)"
    printf '%s\tnot-selected\t0\t-\t0\n' "$name" >>"$STAGES"
    return
  fi
  cap=$((cap * SCALE))
  reserve=$((reserve * SCALE))
  local left=$((BUDGET - ($(date +%s) - START) - reserve))
  local limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    log "$name: skipped, the budget is spent"
    printf '%s\tskipped-budget\t0\t-\t%s\n' "$name" "$required" >>"$STAGES"
    return
  fi
  log "$name: start (limit ${limit}s): $*"
  local t0=$(date +%s) rc status=passed
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >>"$LOG" 2>&1
  rc=$?
  ((rc != 0)) && status=failed
  ((rc == 124 || rc == 137)) && status=timeout
  log "$name: $status (rc $rc, $(($(date +%s) - t0))s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$rc" "$required" \
    >>"$STAGES"
}

skip() {  # skip NAME REQUIRED WHY
  log "$1: skipped: $3"
  printf '%s\tskipped-no-gpu\t0\t-\t%s\n' "$1" "$2" >>"$STAGES"
}

environment() {
  command -v nvidia-smi >/dev/null && nvidia-smi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("numpy", "scipy", "pyarrow", "pytest", "safetensors", "huggingface_hub",
             "pytest_timeout", "ray", "pysam", "deepspeed", "duckdb", "ducc0"):
    try:
        print(f"  {name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:  # absent on the GPU machine: ray, pysam, deepspeed, duckdb
        print(f"  {name} unavailable ({type(exc).__name__})")
EOF
}

build() {  # the package without dependencies, with the extension where CUDA is there
  local flag=0
  [ "$GPU" = 1 ] && flag=1
  GENOMECONV_BUILD_CUDA=$flag GENOMECONV_CUDA_ARCHS=${GENOMECONV_CUDA_ARCHS:-90a} \
    MAX_JOBS=${MAX_JOBS:-16} "$PY" -m pip install --no-index --no-build-isolation --no-deps \
    --no-cache-dir -v -e . >"$OUT/build.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/build.log"
  if [ "$GPU" = 1 ] && ! "$PY" -c "import genomeconv._monarch_cuda"; then
    echo "the editable install left no importable extension: building it in place"
    GENOMECONV_BUILD_CUDA=1 GENOMECONV_CUDA_ARCHS=${GENOMECONV_CUDA_ARCHS:-90a} \
      MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace >>"$OUT/build.log" 2>&1 &&
      "$PY" -c "import genomeconv._monarch_cuda"
    return
  fi
  [ "$GPU" = 1 ] || echo "no CUDA device: installed without the extension (GENOMECONV_BUILD_CUDA=0)"
  return $rc
}

export -f environment build
export PY OUT

PYTEST_OPTS=(-m gpu -q -rfEs -p no:cacheprovider --durations=10)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTS+=(--timeout=120)

GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>>"$LOG" || echo 0)
export GPU
SCALE=1  # stage limits x3 on a dry run: a shared CPU runs the small sizes slower than a GPU
[ "$GPU" = 1 ] || SCALE=3
BUDGET=${GPU_CHECK_BUDGET_S:-$((480 * SCALE))}
log "OUT=$OUT budget ${BUDGET}s, CUDA device: $([ "$GPU" = 1 ] && echo yes || echo 'NO (dry run)')"
if [ "$GPU" != 1 ] && [ "${GPU_CHECK_REQUIRE_GPU:-0}" = 1 ]; then
  log "GPU_CHECK_REQUIRE_GPU=1 but torch sees no CUDA device"
  nvidia-smi >>"$LOG" 2>&1
  exit 3
fi

stage environment 0 30 440 environment
stage build 1 200 270 build
stage pytest-kernels 1 120 230 "$PY" -m pytest "${PYTEST_OPTS[@]}" tests/test_gpu_kernels.py \
  --junitxml="$OUT/pytest_kernels.xml"
stage pytest-model 1 60 200 "$PY" -m pytest "${PYTEST_OPTS[@]}" tests/test_gpu_model.py \
  --junitxml="$OUT/pytest_model.xml"
stage model 1 120 160 "$PY" benchmarks/gpu_check.py model --out "$OUT"
stage evo2 1 120 70 "$PY" benchmarks/gpu_check_evo2.py evo2 --out "$OUT"
stage variants 1 50 30 "$PY" benchmarks/gpu_check_evo2.py variants --out "$OUT"
left=$((BUDGET - ($(date +%s) - START)))
stage bench 1 200 15 "$PY" benchmarks/bench_gpu.py --results-dir "$OUT" --name bench_gpu \
  --budget-s $((left > 200 * SCALE ? 110 * SCALE : left * 55 / 100))
if [ "$GPU" = 1 ] && command -v compute-sanitizer >/dev/null; then
  stage sanitizer 0 90 0 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" benchmarks/gpu_check.py smoke
else
  skip sanitizer 0 "no CUDA device or no compute-sanitizer"
fi
"$PY" benchmarks/gpu_check.py summary --out "$OUT" --stages "$STAGES" 2>&1 | tee -a "$LOG"
