#!/usr/bin/env bash
# Build the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a
# separate build directory and run the CPU test suite under them.
# Usage: tools/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
LINK=0 BUILD_DIR=build-asan BUILD_TYPE=RelWithDebInfo OXKERNELS_CUDA=OFF \
  CMAKE_ARGS="-DOXKERNELS_SANITIZE=ON ${CMAKE_ARGS:-}" tools/dev-build.sh
so=$(ls build-asan/_C*.so)
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
# A copy of the package that loads the sanitized module, so the working tree's link stays as it was.
cp -r python/oxkernels "$pkg/"
rm -f "$pkg"/oxkernels/_C*.so
cp "$so" "$pkg/oxkernels/"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
PYTHONPATH="$pkg" python3 -m pytest -q -p no:cacheprovider -m "not slow and not measures_memory and not exhausts_memory" "${@:-tests}"
