#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Installs everything the tests need (Debian packages, the npm test clients), builds kernelgate
# twice (normal, and with AddressSanitizer + UndefinedBehaviorSanitizer) and runs the whole
# suite: unit tests, fuzz replays, integration tests with real ipykernel kernels, and real
# clients (@jupyterlab/services, Jupyter Server / Notebook with --gateway-url, Chromium).
# Ends with a line "N passed, M failed".
#   tools/test.sh              everything
#   tools/test.sh --no-asan    skip the sanitizer build
#   tools/test.sh -R REGEX     only tests whose name matches (both builds)
set -uo pipefail
cd "$(dirname "$0")/.."
asan=1
ctest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-asan) asan=0 ;;
        -R) ctest_args+=(-R "$2"); shift ;;
        -h|--help) sed -n 3,10p "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
jobs=$(nproc); [ "$jobs" -gt 2 ] && jobs=2
set -e
bash tools/install-deps.sh --test
echo "[test] npm ci (test clients)"
npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
echo "[test] building (RelWithDebInfo)"
source tools/cmake-flags.sh
cmake -S . -B build "${test_cmake_flags[@]}" >/dev/null
cmake --build build -j"$jobs"
if [ "$asan" -eq 1 ]; then
    echo "[test] building (ASan + UBSan)"
    cmake -S . -B build-asan "${asan_cmake_flags[@]}" >/dev/null
    cmake --build build-asan -j"$jobs"
fi
set +e
total_pass=0; total_fail=0; rc=0
run_ctest() {  # dir label [extra ctest args]
    local dir=$1 label=$2; shift 2
    local log; log=$(mktemp)
    echo "[test] ctest: $label"
    ctest --test-dir "$dir" --output-on-failure --no-tests=error "$@" "${ctest_args[@]+"${ctest_args[@]}"}" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || rc=1
    local line; line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -1)
    if [ -n "$line" ]; then
        local failed total
        failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
        total=$(echo "$line" | sed -E 's/.* tests failed out of ([0-9]+).*/\1/')
        total_fail=$((total_fail + failed)); total_pass=$((total_pass + total - failed))
    else
        total_fail=$((total_fail + 1))
    fi
    rm -f "$log"
}
if [ "$asan" -eq 1 ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    # Under the sanitizers: unit tests, fuzz replays and the integration tests that drive the
    # sanitized gateway with real kernels.
    run_ctest build-asan "ASan+UBSan" -L 'unit|fuzz|integration'
    unset ASAN_OPTIONS UBSAN_OPTIONS
fi
run_ctest build "RelWithDebInfo (all tests)"
echo
echo "${total_pass} passed, ${total_fail} failed"
exit $rc
