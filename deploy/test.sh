#!/usr/bin/env bash
# The README's test command: set up, build, and run the whole test suite with CTest, in four
# builds:
#   build/       the release build: every test (unit, distributed, service, CLI, browser)
#   build-asan/  the same code with AddressSanitizer and UBSan (every report fatal): the tests
#                of everything that faces the network or the disk (job spec and protocol
#                decoding, formats, SQLite, scheduling, communicators, distributed training,
#                the service end to end) again; the numeric kernels' tests are left to the
#                release build (under ASan they alone take ~8 min on 2 cores)
#   build-tsan/  ThreadSanitizer (every report fatal): the scheduler's tests and the service
#                tests, whose coordinator and workers are TSan builds too (tests/tsan.supp says
#                what is suppressed and why)
#   build-fuzz/  clang with libFuzzer: every fuzz target of tests/fuzz for 20 s from its seeds
# It ends with one line, "all: N passed, M failed", summing the four.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${MOHGE_BUILD_JOBS:-2}"
test_jobs="${MOHGE_TEST_JOBS:-2}"

deploy/install-deps.sh
deploy/build.sh

passed=0
failed=0
status=0
# run_ctest LOG ARGS...: runs ctest, echoing its output, and adds its counts to the totals.
run_ctest() {
  local log=$1
  shift
  set +e
  ctest "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local line
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -1)
  if [[ -n "$line" ]]; then
    local bad total
    bad=$(sed -E 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
    passed=$((passed + total - bad))
    failed=$((failed + bad))
  fi
  if ((rc != 0)); then status=1; fi
}

echo "[test] release build: every test"
run_ctest build/ctest.log --test-dir build --output-on-failure -j "$test_jobs"

echo "[test] AddressSanitizer + UBSan build: the tests of what faces the network or the disk"
asan_tests=(test_api test_storage test_db test_scheduler test_comm test_distributed test_service)
if [[ ! -f build-asan/build.ninja ]]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DMOHGE_SANITIZE=address,undefined \
        -DMOHGE_WITH_CUDA=OFF
fi
cmake --build build-asan -j "$jobs" --target "${asan_tests[@]}" mohge-coordinator mohge-worker mohge
# UCX's memory hooks and ASan's interceptors both want malloc and mmap: UCX's yield.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
  run_ctest build-asan/ctest.log --test-dir build-asan --output-on-failure -j "$test_jobs" \
    -L "^($(IFS='|'; echo "${asan_tests[*]}"))\$"

echo "[test] ThreadSanitizer build: the scheduler's tests and the service tests"
tsan_tests=(test_scheduler test_service)
if [[ ! -f build-tsan/build.ninja ]]; then
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DMOHGE_SANITIZE=thread \
        -DMOHGE_WITH_CUDA=OFF
fi
cmake --build build-tsan -j "$jobs" --target "${tsan_tests[@]}" mohge-coordinator mohge-worker mohge
# Every report is fatal, in the test process and in the coordinator and workers it spawns.
TSAN_OPTIONS="halt_on_error=1 abort_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
  run_ctest build-tsan/ctest.log --test-dir build-tsan --output-on-failure -j "$test_jobs" \
    -L "^($(IFS='|'; echo "${tsan_tests[*]}"))\$"

echo "[test] fuzzing: every libFuzzer target for 20 s"
if [[ ! -f build-fuzz/build.ninja ]]; then
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMOHGE_FUZZ=ON \
        -DMOHGE_WITH_CUDA=OFF
fi
cmake --build build-fuzz -j "$jobs"
run_ctest build-fuzz/ctest.log --test-dir build-fuzz --output-on-failure -j "$test_jobs"

echo "all: $passed passed, $failed failed"
exit "$status"
