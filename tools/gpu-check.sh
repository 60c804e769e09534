#!/usr/bin/env bash
# One device session, everything a GPU is needed for, its logs under $OUT (default ./gpu-out):
#   1. the extension: a prebuilt one ($OXKERNELS_PREBUILT, built elsewhere for this Python
#      with CUDA ON) if it imports with CUDA, else built here;
#   2. at the same time (none of them is timed): the test suite (CUDA tests included), and
#      the CUDA op tests under compute-sanitizer memcheck and racecheck;
#   3. then, with the GPU to themselves: end-to-end epochs, the kernel profile
#      (tools/gpu_profile.py) and the GPU benchmarks (written into benchmarks/RESULTS.md,
#      which is copied to $OUT).
# $OXKERNELS_DATA: the data root (MNIST fits in a device call; CIFAR-10 does not, so LeNet
# runs on synthetic images of its shape). Usage: tools/gpu-check.sh [bench suites...]
#
# With a 15-minute device budget (2026-11-27 on an H200), build the extension here for the
# device's Python first (cmake -B build-gpu312 -DOXKERNELS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
# -DPython_EXECUTABLE=<python3.12> ...), copy MNIST into an ignored folder, carry both, and run e.g.
#   OXKERNELS_PREBUILT=build-gpu312/_C.cpython-312-x86_64-linux-gnu.so OXKERNELS_DATA=.gpudata \
#   TEST_FILTER="cuda or graph" SANITIZER_TOOLS=memcheck E2E_MLP_CASES=mlp-adam-b64 \
#   BENCH_MAX_TIME=0.02 tools/gpu-check.sh bench_conv.py bench_linear.py
# The full default run took 299 s there with the timeouts cutting racecheck and the benchmarks.
# The tenth session's three runs (the command above with TEST_TIMEOUT / SANITIZER_TIMEOUT ≈ 100,
# E2E_TIMEOUT ≈ 30, PROFILE_CASES="conv" after the first, two or three suites) took 167–207 s
# of wall each, and 204–243 s of device time with the machine's start and the transfers.
# The eleventh session's CUDA code (linreg fit by the quadratic form: csrc/cuda/linreg_form.cu,
# linreg_fit.cu) has not run yet: its first run should put SANITIZER_TOOLS="memcheck racecheck synccheck"
# SANITIZER_TESTS=tests/test_linreg_fit.py and bench_linreg.py on the command line.
# CPU_SUMMARIES="bench_linear.py" adds the CPU summaries on the host's 16 cores (the CPU code
# is otherwise only ever timed on the 2-core development machine).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=python
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"

log "extension"
cuda_ok() { python3 -c "import oxkernels, sys; i = oxkernels.info(); print(i); sys.exit(not i['cuda_built'])"; }
if [ -n "${OXKERNELS_PREBUILT:-}" ]; then cp "$OXKERNELS_PREBUILT" python/oxkernels/; fi
if ! cuda_ok >>"$OUT/gpu.txt" 2>&1; then
  rm -f python/oxkernels/_C.cpython-3*.so
  BUILD_DIR=build-gpu OXKERNELS_CUDA=ON JOBS=16 tools/dev-build.sh 2>&1 | tail -5 | tee -a "$OUT/gpu.txt"
  cuda_ok >>"$OUT/gpu.txt" 2>&1 || { log "no CUDA build of oxkernels; stopping"; exit 1; }
fi

log "tests and compute-sanitizer, in parallel"
timeout ${TEST_TIMEOUT:-150} python3 -m pytest tests -q -n ${TEST_WORKERS:-8} --timeout=120 -p no:cacheprovider \
  -rfEs --tb=short ${TEST_FILTER:+-k "$TEST_FILTER"} >"$OUT/tests.log" 2>&1 &
tests_pid=$!
OP_TESTS="tests/test_conv.py tests/test_pool.py tests/test_activation.py tests/test_linear.py tests/test_loss.py
  tests/test_adam.py tests/test_linreg.py tests/test_linreg_fit.py tests/test_gemm.py"
for tool in ${SANITIZER_TOOLS:-memcheck racecheck}; do
  timeout ${SANITIZER_TIMEOUT:-150} compute-sanitizer --tool $tool --print-limit 20 \
    python3 -m pytest -q -p no:cacheprovider -k "cuda and not slow" ${SANITIZER_TESTS:-$OP_TESTS} \
    >"$OUT/sanitizer-$tool.log" 2>&1 &
done
wait
tail -n 3 "$OUT/tests.log"; tail -n 2 "$OUT"/sanitizer-*.log

log "end-to-end epochs"
timeout ${E2E_TIMEOUT:-120} python3 -m oxkernels bench --device cuda --epochs 3 --cases ${E2E_MLP_CASES:-mlp-adam-b64,mlp-adam-b256} \
  --impls torch,oxkernels,oxkernels-fused,torch-cudagraph 2>&1 | tee "$OUT/e2e.log" | tail -8
timeout ${E2E_TIMEOUT:-120} python3 -m oxkernels bench --device cuda --epochs 2 --synthetic --cases lenet-adam-b64 \
  --impls torch,oxkernels,oxkernels-fused,torch-cudagraph 2>&1 | tee -a "$OUT/e2e.log" | tail -6

log "kernel profile"
timeout ${PROFILE_TIMEOUT:-90} python3 tools/gpu_profile.py ${PROFILE_CASES:-} >"$OUT/profile.log" 2>&1
tail -4 "$OUT/profile.log"

if [ -n "${CPU_SUMMARIES:-}" ]; then  # e.g. "bench_linear.py": the CPU side-by-side summaries on the host's cores
  log "CPU summaries ($(nproc) cores)"
  for suite in $CPU_SUMMARIES; do
    timeout ${CPU_SUMMARY_TIMEOUT:-60} python3 "benchmarks/$suite" cpu >"$OUT/cpu-${suite%.py}.log" 2>&1
    tail -n 4 "$OUT/cpu-${suite%.py}.log"
  done
fi

log "benchmarks"
timeout ${BENCH_TIMEOUT:-150} python3 benchmarks/run.py --device cuda --max-time ${BENCH_MAX_TIME:-0.05} --write "$@" \
  >"$OUT/bench.log" 2>&1
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
log "done"
