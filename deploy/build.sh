#!/usr/bin/env bash
# Configures and builds into ./build (Release, Ninja). Re-running rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${MOHGE_BUILD_JOBS:-2}"
if [[ ! -f build/build.ninja ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build build -j "$jobs"
