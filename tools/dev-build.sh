#!/usr/bin/env bash
# Incremental developer build: compiles oxkernels._C into build-dev/ (or $BUILD_DIR)
# and links it into python/oxkernels/, so that `PYTHONPATH=python pytest tests`
# runs against the working tree. OXKERNELS_CUDA=OFF|ON|AUTO as for pip install.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-dev}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} \
  -DOXKERNELS_CUDA="${OXKERNELS_CUDA:-OFF}" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v python3)" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "${JOBS:-2}"
so=$(ls "$build"/_C*.so)
if [ "${LINK:-1}" = 1 ]; then ln -sf "$(realpath "$so")" python/oxkernels/; fi
echo "built $so"
