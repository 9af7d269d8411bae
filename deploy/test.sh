#!/usr/bin/env bash
# The README's test command: set up, build, and run the whole test suite with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
ctest --test-dir build --output-on-failure -j "${MOHGE_TEST_JOBS:-2}"
