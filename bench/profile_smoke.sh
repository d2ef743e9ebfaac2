#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# bench/profile_smoke.sh BUILD_DIR OUT_DIR: keeps the profiling tools working (CI). Runs
# profile.sh --quick (callgrind, a tenth of the requests), then profile_compare.py on that
# profile against itself, and checks that every scenario was profiled and compared: the
# instruction counts were read (a ratio of exactly 1.00 for a profile against itself) and the
# top entries listed. Nothing about speed is checked.
set -euo pipefail
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="$1"
OUT="$2"
rm -rf "$OUT"
"$SRC_DIR/profile.sh" --quick --build-dir "$BUILD_DIR" --out "$OUT" > "$OUT.log" 2>&1 || {
    cat "$OUT.log" >&2
    exit 1
}
report="$("$SRC_DIR/profile_compare.py" "$OUT" "$OUT" --names one,same --top 5)"
echo "$report"
fail=0
for s in kernel_info flood; do
    section="$(awk -v s="== $s" '$0 == s {p = 1; next} /^== / {p = 0} p' <<< "$report")"
    grep -q "instructions per request" <<< "$section" || { echo "FAIL: $s: no instruction count" >&2; fail=1; }
    grep -q "same/one: 1.00, outside libcrypto 1.00" <<< "$section" || { echo "FAIL: $s: no ratio" >&2; fail=1; }
    [ "$(grep -c -- '-- one, callgrind self' <<< "$section")" = 1 ] || { echo "FAIL: $s: no top entries" >&2; fail=1; }
done
[ "$fail" = 0 ] && echo "profile smoke: 2 scenarios profiled and compared"
exit "$fail"
