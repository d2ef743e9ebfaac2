#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# bench/profile.sh: where kernelgate spends its instructions on the data path.
#
# Runs kernelgate under valgrind --tool=callgrind with instrumentation off, starts a kernel
# through it (kg-echo-kernel, or ipykernel with --kernel python3), warms up, then records one profile per scenario (instrumentation on only
# while kg-bench measures against the already running kernel, so start-up is left out) and
# prints the top entries by inclusive and by self cost.
# perf would be cheaper, but this VM has no hardware counters (perf stat -e instructions:
# "<not supported>"). Callgrind counts user-space instructions only, and valgrind hides
# SHA-NI from OpenSSL (HMAC looks ~5x dearer than it is), so --perf adds a native cross-check:
# perf sampling on the cpu-clock software event, kernel time and the libzmq I/O thread included.
set -euo pipefail

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
    cat <<EOF
usage: bench/profile.sh [--build-dir DIR] [--kernelgate BIN] [--out DIR] [--top N]
                        [--scenarios kernel_info,flood] [--protocol v1|legacy] [--perf]
                        [--kernel echo|python3] [--quick]

Writes OUT/callgrind.<scenario>.out and OUT/<scenario>.{inclusive,self}.txt; prints the top N
(default 15) of each. Needs valgrind (callgrind_control, callgrind_annotate) and curl.
--perf also samples a native run with perf (cpu-clock, DWARF call graphs): OUT/perf.<scenario>.*
--kernel python3 profiles against ipykernel (Debian's python3-ipykernel) instead of
kg-echo-kernel: what the gateway costs per message when every message arrives alone.
--quick records a tenth of the requests (a smoke run that checks the tooling, in CI).
EOF
}
BUILD_DIR="$(dirname "$SRC_DIR")/build"
KG_BIN=""
OUT=""
TOP=15
SCENARIOS="kernel_info,flood"
PROTOCOL=v1
PERF=0
QUICK=0
KERNEL=echo
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) BUILD_DIR="$2"; shift ;;
        --kernelgate) KG_BIN="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --top) TOP="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --protocol) PROTOCOL="$2"; shift ;;
        --perf) PERF=1 ;;
        --kernel) KERNEL="$2"; shift ;;
        --quick) QUICK=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "profile.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case "$KERNEL" in
    echo|python3) ;;
    *) echo "profile.sh: --kernel must be echo or python3, not '$KERNEL'" >&2; exit 2 ;;
esac
KG_BIN="${KG_BIN:-$BUILD_DIR/kernelgate}"
KG_BIN="$(realpath -m "$KG_BIN")"  # linked from the work dir below
BUILD_DIR="$(realpath -m "$BUILD_DIR")"
BENCH="$BUILD_DIR/kg-bench"
ECHO_KERNEL="$BUILD_DIR/kg-echo-kernel"
for f in "$KG_BIN" "$BENCH" "$ECHO_KERNEL"; do
    [ -x "$f" ] || { echo "profile.sh: $f missing (build kernelgate kg-bench kg-echo-kernel)" >&2; exit 2; }
done
for t in valgrind callgrind_control callgrind_annotate curl; do
    command -v "$t" >/dev/null || { echo "profile.sh: $t is needed" >&2; exit 2; }
done

WORK="$(mktemp -d /tmp/kg-profile.XXXXXX)"
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT" "$WORK/kernels/echo" "$WORK/kernels/python3" "$WORK/bin"
OUT="$(cd "$OUT" && pwd)"
TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat > "$WORK/kernels/echo/kernel.json" <<EOF
{"argv": ["$ECHO_KERNEL", "-f", "{connection_file}"], "display_name": "kg echo", "language": "echo"}
EOF
cat > "$WORK/kernels/python3/kernel.json" <<EOF
{"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (ipykernel)", "language": "python"}
EOF
DIALECT=echo
if [ "$KERNEL" = python3 ]; then
    DIALECT=python
    /usr/bin/python3 -c 'import ipykernel' 2>/dev/null ||
        { echo "profile.sh: --kernel python3 needs ipykernel (apt-get install python3-ipykernel)" >&2; exit 2; }
fi
ln -sf "$KG_BIN" "$WORK/bin/kg-profile-gateway"  # not hit by a pkill aimed at kernelgate
VG_PID=""
stop_gateway() {
    if [ -n "$VG_PID" ]; then
        kill -TERM "$VG_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$VG_PID" 2>/dev/null || true
        wait "$VG_PID" 2>/dev/null || true
        VG_PID=""
    fi
}
cleanup() {
    stop_gateway
    if [[ "$OUT/" == "$WORK/"* ]]; then  # results live in the work dir: keep only them
        rm -rf "$WORK/data" "$WORK/data2" "$WORK/kernels" "$WORK/bin" "$WORK"/cg.out*
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
    "$WORK/bin/kg-profile-gateway" serve --ip 127.0.0.1 --port 0 --data-dir "$WORK/data" \
    --auth-token "$TOKEN" --kernel-dir "$WORK/kernels" --no-conda --log-level warn \
    --launch-timeout 120 > "$OUT/gateway.log" 2>&1 &
VG_PID=$!
deadline=$((SECONDS + 120))
URL=""
while [ -z "$URL" ]; do
    URL="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$OUT/gateway.log" 2>/dev/null | head -1 || true)"
    if ! kill -0 "$VG_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        echo "profile.sh: kernelgate did not start under valgrind:" >&2; tail "$OUT/gateway.log" >&2; exit 1
    fi
    sleep 0.2
done
ID="$(curl -sf --max-time 120 -H "Authorization: token $TOKEN" -d "{\"name\":\"$KERNEL\"}" "$URL/api/kernels" |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
common=(--target gateway --url "$URL" --token "$TOKEN" --kernel-id "$ID" --protocol "$PROTOCOL"
        --dialect "$DIALECT" --repeat 1 --timeout 120 --budget 60)
RT=1000 FLOOD=5000 STREAM_BYTES=8388608
if [ "$QUICK" = 1 ]; then
    RT=100 FLOOD=500 STREAM_BYTES=838860
fi
# Warm-up (connections, allocator, caches), not recorded.
"$BENCH" "${common[@]}" --scenarios kernel_info,flood --rt 100 --flood 500 > /dev/null 2>&1

IFS=',' read -r -a list <<< "$SCENARIOS"
for s in "${list[@]}"; do
    callgrind_control -z "$VG_PID" > /dev/null 2>&1
    callgrind_control -i on "$VG_PID" > /dev/null 2>&1
    "$BENCH" "${common[@]}" --scenarios "$s" --rt "$RT" --flood "$FLOOD" --window 64 \
        --iopub-flood "$FLOOD" --stream-bytes "$STREAM_BYTES" > "$OUT/$s.bench.txt" 2>&1
    callgrind_control -i off "$VG_PID" > /dev/null 2>&1
    callgrind_control -d "$s" "$VG_PID" > /dev/null 2>&1
    sleep 1
    f="$(ls -t "$WORK"/cg.out* | head -1)"
    cp "$f" "$OUT/callgrind.$s.out"
    callgrind_annotate --inclusive=yes "$OUT/callgrind.$s.out" > "$OUT/$s.inclusive.txt" 2>/dev/null
    callgrind_annotate "$OUT/callgrind.$s.out" > "$OUT/$s.self.txt" 2>/dev/null
    # (sed -n, not head: no SIGPIPE under pipefail)
    echo "== $s ($(grep -E 'p50_us|msgs_per_s' "$OUT/$s.bench.txt" | sed -n 1p | awk '{print $2" "$3}') under callgrind)"
    echo "-- inclusive, top $TOP"
    grep -E '^ *[0-9,]+ \(' "$OUT/$s.inclusive.txt" | sed -n "1,${TOP}p"
    echo "-- self, top $TOP"
    grep -E '^ *[0-9,]+ \(' "$OUT/$s.self.txt" | sed -n "1,${TOP}p"
    echo "-- kernelgate's own functions, inclusive, top $TOP"
    grep -E '^ *[0-9,]+ \(' "$OUT/$s.inclusive.txt" | grep -E ':kernelgate::[a-z_]+::' |
        grep -v -E 'lambda|_Function_handler|=>' | sed -n "1,${TOP}p"
done
stop_gateway

if [ "$PERF" = 1 ]; then
    command -v perf >/dev/null || { echo "profile.sh: perf is needed for --perf" >&2; exit 2; }
    "$WORK/bin/kg-profile-gateway" serve --ip 127.0.0.1 --port 0 --data-dir "$WORK/data2" \
        --auth-token "$TOKEN" --kernel-dir "$WORK/kernels" --no-conda --log-level warn \
        > "$OUT/gateway-native.log" 2>&1 &
    VG_PID=$!
    URL=""
    deadline=$((SECONDS + 30))
    while [ -z "$URL" ]; do
        URL="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$OUT/gateway-native.log" 2>/dev/null | head -1 || true)"
        if ! kill -0 "$VG_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "profile.sh: kernelgate did not start" >&2; exit 1
        fi
        sleep 0.1
    done
    ID="$(curl -sf --max-time 60 -H "Authorization: token $TOKEN" -d "{\"name\":\"$KERNEL\"}" "$URL/api/kernels" |
          /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    common=(--target gateway --url "$URL" --token "$TOKEN" --kernel-id "$ID" --protocol "$PROTOCOL"
            --dialect "$DIALECT" --repeat 1 --timeout 60)
    "$BENCH" "${common[@]}" --scenarios kernel_info,flood --rt 200 --flood 2000 > /dev/null 2>&1
    NATIVE_STREAM_BYTES=$((1024 * 1024 * 1024))  # the echo kernel: about 1.5 s
    [ "$KERNEL" = python3 ] && NATIVE_STREAM_BYTES=$((256 * 1024 * 1024))  # ipykernel: about 3 s
    [ "$QUICK" = 1 ] && NATIVE_STREAM_BYTES=$((8 * 1024 * 1024))
    for s in "${list[@]}"; do
        perf record -e cpu-clock -F 1000 --call-graph dwarf,16384 -p "$VG_PID" \
            -o "$OUT/perf.$s.data" -- sleep 6 > "$OUT/perf.$s.log" 2>&1 &
        perf_pid=$!
        sleep 0.3
        # Loops stop at the 5 s budget: the sampled window is all measurement. A stream is
        # one long write instead, sized to last a few seconds.
        "$BENCH" "${common[@]}" --scenarios "$s" --rt 1000000 --flood 10000000 --window 64 \
            --iopub-flood 50000 --stream-bytes "$NATIVE_STREAM_BYTES" --budget 5 \
            > "$OUT/$s.native.bench.txt" 2>&1
        wait "$perf_pid" || true
        perf report -i "$OUT/perf.$s.data" --no-children --sort dso,sym -g none --stdio \
            > "$OUT/perf.$s.self.txt" 2>/dev/null || true
        perf report -i "$OUT/perf.$s.data" --children --sort sym -g none --stdio \
            > "$OUT/perf.$s.inclusive.txt" 2>/dev/null || true
        echo "== $s, native, perf cpu-clock ($(grep -E 'p50_us|msgs_per_s' "$OUT/$s.native.bench.txt" | sed -n 1p | awk '{print $2" "$3}'))"
        echo "-- self (dso, symbol), top $TOP"
        grep '%' "$OUT/perf.$s.self.txt" | grep -v '^#' | sed -n "1,${TOP}p" | cut -c1-200
        echo "-- inclusive (children), top $TOP"
        grep '%' "$OUT/perf.$s.inclusive.txt" | grep -v '^#' | sed -n "1,${TOP}p" | cut -c1-200
        echo "-- kernelgate's own functions and libzmq, inclusive, top $TOP"
        grep '%' "$OUT/perf.$s.inclusive.txt" | grep -E '\] (kernelgate::[a-z_]+::|zmq::)' |
            grep -v -E 'lambda|_Function_handler' | sed -n "1,${TOP}p" | cut -c1-200
    done
    stop_gateway
fi
echo "profile.sh: profiles in $OUT (open with kcachegrind or callgrind_annotate)" >&2
