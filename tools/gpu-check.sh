#!/usr/bin/env bash
# One device session: build with CUDA for the local GPU, run the whole test
# suite (CUDA tests included), the CUDA op tests under compute-sanitizer, the
# end-to-end epochs, then the GPU benchmarks. Everything it prints
# also lands in $OUT (default ./gpu-out). Usage: tools/gpu-check.sh [bench suites...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== build"
BUILD_DIR=build-gpu OXKERNELS_CUDA=ON JOBS=16 tools/dev-build.sh 2>&1 | tail -5 | tee "$OUT/build.log"
python3 -m oxkernels info | tee -a "$OUT/gpu.txt"

echo "== tests"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest tests -q --timeout=120 -p no:cacheprovider \
  ${TEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -40

echo "== compute-sanitizer (memcheck, racecheck) on the CUDA op tests"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout ${SANITIZER_TIMEOUT:-120} compute-sanitizer --tool $tool --target-processes all --print-limit 20 \
      python3 -m pytest -q -x -p no:cacheprovider -k "cuda and not slow" ${SANITIZER_TESTS:-tests/test_reliability.py} \
      2>&1 | tee "$OUT/sanitizer-$tool.log" | tail -8
  done
else
  echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"
fi

echo "== end-to-end epochs (synthetic data of the real shapes: the CIFAR-10 files cannot be carried)"
timeout ${E2E_TIMEOUT:-240} python3 -m oxkernels bench --synthetic --device cuda --epochs 3 \
  --impls torch,oxkernels,oxkernels-fused,torch-cudagraph --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log" | tail -14

echo "== benchmarks"
timeout ${BENCH_TIMEOUT:-200} python3 benchmarks/run.py --device cuda --max-time 0.2 "$@" 2>&1 \
  | tee "$OUT/bench.log" | grep -v '^\$' | tail -80
