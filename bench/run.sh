#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# bench/run.sh: kernelgate's benchmark, side by side in one run (issue 4).
#
# Targets, all on 127.0.0.1 and all serving the same kernelspecs (kg-echo-kernel and Debian's
# python3 ipykernel):
#   direct                  kg-bench's own ZeroMQ client to a kernel it launches (the limit)
#   kernelgate              kernelgate, v1 WebSocket frames
#   kernelgate-legacy       kernelgate, legacy JSON frames (echo kernel, data-path scenarios)
#   kernelgate-sleep        kernelgate --predictive-poll 0 (the loop always sleeps between
#                           events), v1 frames, the latency and fan-out scenarios
#   kernelgate-busy-poll    kernelgate --busy-poll (opt-in: the loop polls after all work
#                           instead of only for expected messages, paused under CPU
#                           pressure), v1 frames, the latency and fan-out scenarios
#   kernelgate-warm         kernelgate --warm-pool python3=1: kernel start only, python3 only
#                           (starts 1.5 s apart, so the pool refills between them)
#   kernelgate-tls          kernelgate --certfile/--keyfile: https and wss (a self-signed
#                           certificate made for the run), v1 frames, the data-path scenarios
#   jupyter-server          Debian's Jupyter Server 1.23, default configuration
#   jupyter-server-nodelay  the same with bench/jupyter_server_nodelay.py (TCP_NODELAY on the
#                           kernel WebSockets, iopub rate limit off)
#   jupyter-server-tls      jupyter-server-nodelay with --certfile/--keyfile (the same
#                           certificate), the data-path scenarios
#   front-kernelgate        Jupyter Server 1.23 (nodelay) in front of kernelgate: started with
#                           --gateway-url, as the README tells users to connect; its kernels
#                           run on kernelgate
#   front-jupyter-server    the same front in front of a second Jupyter Server 1.23 (nodelay)
#                           acting as the gateway (Jupyter Kernel Gateway is a Jupyter Server
#                           application and is not packaged in Debian 12)
# Each kg-bench scenario is repeated, the medians and the ratios kernelgate/direct and
# JupyterServer/kernelgate are printed (bench/report.py) and written as JSON.
set -euo pipefail

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SRC_DIR")"

usage() {
    cat <<EOF
usage: bench/run.sh [--quick | --full] [options]

  --quick             smoke run: tiny counts, one repeat (well under a minute); checks that
                      every scenario produced results (nothing about time)
  --full              the real measurement (default): 3 repeats, counts as in issue 4
  --build-dir DIR     where kernelgate, kg-bench and kg-echo-kernel are (default: $REPO_DIR/build)
  --kernelgate BIN    the kernelgate binary to measure (default: DIR/kernelgate)
  --out DIR           raw kg-bench JSON and logs (default: a new temp dir, kept)
  --json FILE         combined results (default: OUT/results.json)
  --repeat N          repeats per measurement (default: 1 quick, 3 full)
  --targets LIST      comma list of targets (default: all twelve, see the header of this file)
  --kernels LIST      comma list of kernels: echo, python3 (default: both), and
                      echo-libzmq: the echo kernel on libzmq sockets (kg-echo-kernel
                      --libzmq), to see what the kernel's own transport costs
  --busy-poll US      kernelgate-busy-poll's --busy-poll window in microseconds (default 200)
  --transport T       how every target reaches its kernels: ipc (Unix sockets, kernelgate's
                      default for ipykernel) or tcp (loopback ports); default ipc. The same
                      for all targets: kernelgate --kernel-transport, kg-bench --transport,
                      Jupyter Server --KernelManager.transport
  --help              this text

Needs: a build of kernelgate, kg-bench, kg-echo-kernel; /usr/bin/python3 with jupyter_server
and ipykernel (Debian: python3-jupyter-server python3-ipykernel) for those targets/kernels;
curl; openssl (the TLS targets' certificate). Without Jupyter Server or ipykernel those parts are skipped with a warning.
EOF
}

MODE=full
BUILD_DIR="$REPO_DIR/build"
KG_BIN=""
OUT=""
JSON=""
REPEAT=""
TARGETS="direct,kernelgate,kernelgate-legacy,kernelgate-sleep,kernelgate-busy-poll,kernelgate-warm,kernelgate-tls,jupyter-server,jupyter-server-nodelay,jupyter-server-tls,front-kernelgate,front-jupyter-server"
BUSY_POLL=200
KERNELS="echo,python3"
TRANSPORT=ipc
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --full) MODE=full ;;
        --build-dir) BUILD_DIR="$2"; shift ;;
        --kernelgate) KG_BIN="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --json) JSON="$2"; shift ;;
        --repeat) REPEAT="$2"; shift ;;
        --targets) TARGETS="$2"; shift ;;
        --kernels) KERNELS="$2"; shift ;;
        --transport) TRANSPORT="$2"; shift ;;
        --busy-poll) BUSY_POLL="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

case "$TRANSPORT" in
    ipc|tcp) ;;
    *) echo "run.sh: --transport is ipc or tcp, not $TRANSPORT" >&2; exit 2 ;;
esac
case "$BUSY_POLL" in
    ''|*[!0-9]*) echo "run.sh: --busy-poll is a number of microseconds, not $BUSY_POLL" >&2; exit 2 ;;
esac
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
KG_BIN="${KG_BIN:-$BUILD_DIR/kernelgate}"
BENCH="$BUILD_DIR/kg-bench"
ECHO_KERNEL="$BUILD_DIR/kg-echo-kernel"
PY=/usr/bin/python3
for f in "$KG_BIN" "$BENCH" "$ECHO_KERNEL"; do
    if [ ! -x "$f" ]; then
        echo "run.sh: $f is missing; build it: cmake -S . -B $BUILD_DIR -DKERNELGATE_BUILD_TESTS=ON && cmake --build $BUILD_DIR --target kernelgate kg-bench kg-echo-kernel" >&2
        exit 2
    fi
done
command -v curl >/dev/null || { echo "run.sh: curl is needed" >&2; exit 2; }
if [[ ",$TARGETS," == *"-tls,"* ]] && ! command -v openssl >/dev/null; then
    echo "run.sh: openssl is needed for the TLS targets (or leave them out of --targets)" >&2
    exit 2
fi

has() { [[ ",$1," == *",$2,"* ]]; }
if ! "$PY" -c 'import jupyter_server' 2>/dev/null; then
    echo "run.sh: WARNING: $PY has no jupyter_server; Jupyter Server targets skipped" >&2
    TARGETS="$(echo ",$TARGETS," | sed -e 's/,jupyter-server-nodelay,/,/; s/,jupyter-server,/,/;
        s/,jupyter-server-tls,/,/; s/,front-kernelgate,/,/; s/,front-jupyter-server,/,/;
        s/^,//; s/,$//')"
fi
if has "$KERNELS" python3 && ! "$PY" -c 'import ipykernel' 2>/dev/null; then
    echo "run.sh: WARNING: $PY has no ipykernel; python3 kernel skipped" >&2
    KERNELS="$(echo ",$KERNELS," | sed -e 's/,python3,/,/; s/^,//; s/,$//')"
fi

# ---- counts per mode and kernel ----------------------------------------------------------
# Every loop also stops at --budget seconds, so a slow target (Jupyter Server with Nagle at
# ~44 ms per round trip) ends early with fewer samples instead of running for minutes.
if [ "$MODE" = quick ]; then
    REPEAT="${REPEAT:-1}"
    ECHO_ARGS=(--start-n 1 --rt 30 --flood 300 --window 16 --iopub-flood 300 --iopub-size 64
               --stream-bytes 1048576 --stream-n 2 --fanout 1,2 --fanout-rt 10 --broadcast-clients 3
               --broadcast-msgs 100 --budget 2 --timeout 20)
    PY_ARGS=(--start-n 1 --rt 10 --flood 50 --window 8 --iopub-flood 50 --iopub-size 64
             --stream-bytes 262144 --fanout 1,2 --fanout-rt 5 --broadcast-clients 2
             --broadcast-msgs 20 --budget 2 --timeout 30)
    IDLE_KG=200; IDLE_JS=20; IDLE_KERNELS=5
else
    REPEAT="${REPEAT:-3}"
    ECHO_ARGS=(--start-n 5 --rt 2000 --flood 20000 --window 64 --iopub-flood 100000 --iopub-size 64
               --stream-bytes 33554432 --stream-n 3 --fanout 1,4,16,32 --fanout-rt 300 --fanout-budget 1.5
               --broadcast-clients 16 --broadcast-msgs 10000 --budget 3 --timeout 60)
    # ipykernel: 32 of them take ~20 s of CPU to start per target, so fan-out stops at 16.
    # Its own start time varies by tens of ms from one start to the next: 6 starts a repeat.
    PY_ARGS=(--start-n 6 --rt 500 --flood 2000 --window 64 --iopub-flood 2000 --iopub-size 64
             --stream-bytes 8388608 --stream-n 3 --fanout 1,4,16 --fanout-rt 100 --fanout-budget 1.5
             --broadcast-clients 8 --broadcast-msgs 2000 --budget 3 --timeout 90)
    IDLE_KG=10000; IDLE_JS=500; IDLE_KERNELS=50
fi
DATA_SCENARIOS=start,kernel_info,execute,flood,iopub_flood,stream,fanout,broadcast
LEGACY_SCENARIOS=kernel_info,execute,flood,iopub_flood,stream,broadcast
BUSY_POLL_SCENARIOS=kernel_info,execute,fanout

# ---- workspace and cleanup ---------------------------------------------------------------
WORK="$(mktemp -d /tmp/kg-bench-run.XXXXXX)"
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT/raw" "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
JSON="${JSON:-$OUT/results.json}"
TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
MARKER="kgb-$$-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export KG_BENCH_RUN_MARKER="$MARKER"  # inherited by everything started here (cleanup)
STARTED_PIDS=()
RAW_FILES=()

# Processes whose environment carries our marker: only what this run started.
marked_pids() {
    local p
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        [ "$p" = "$$" ] && continue
        if { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx "KG_BENCH_RUN_MARKER=$MARKER"; then
            echo "$p"
        fi
    done
}

stop_pid() {  # SIGTERM, up to 15 s, then SIGKILL
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    for pid in $(marked_pids); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ "$OUT/" == "$WORK/"* ]]; then  # results live in the work dir: keep only them
        rm -rf "$WORK/jupyter" "$WORK/kg-data" "$WORK/kg-data-poll" "$WORK/kg-data-tls" \
            "$WORK/direct" "$WORK/share" "$WORK/bin" "$WORK/tls"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Many idle WebSockets need many descriptors, in kg-bench and in the gateways.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ "$IDLE_KG" -gt $((NOFILE - 500)) ]; then
    echo "run.sh: WARNING: ulimit -n is $NOFILE; idle WebSockets lowered to $((NOFILE - 500))" >&2
    IDLE_KG=$((NOFILE - 500))
fi

# ---- kernelspecs and isolated Jupyter dirs ------------------------------------------------
SHARE="$WORK/share"
mkdir -p "$SHARE/kernels/echo" "$SHARE/kernels/echo-libzmq" "$SHARE/kernels/python3" \
    "$WORK/jupyter"/{runtime,config,data,ipython,root}
cat > "$SHARE/kernels/echo-libzmq/kernel.json" <<EOF
{"argv": ["$ECHO_KERNEL", "-f", "{connection_file}", "--libzmq"],
 "display_name": "kg echo (libzmq)", "language": "echo", "interrupt_mode": "message"}
EOF
cat > "$SHARE/kernels/echo/kernel.json" <<EOF
{"argv": ["$ECHO_KERNEL", "-f", "{connection_file}"], "display_name": "kg echo",
 "language": "echo", "interrupt_mode": "message"}
EOF
cat > "$SHARE/kernels/python3/kernel.json" <<EOF
{"argv": ["$PY", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (ipykernel)", "language": "python"}
EOF
export JUPYTER_PATH="$SHARE"
export JUPYTER_RUNTIME_DIR="$WORK/jupyter/runtime" JUPYTER_CONFIG_DIR="$WORK/jupyter/config"
export JUPYTER_DATA_DIR="$WORK/jupyter/data" IPYTHONDIR="$WORK/jupyter/ipython"
export JUPYTER_PLATFORM_DIRS=0 PYTHONDONTWRITEBYTECODE=1
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV KERNELGATE_AUTH_TOKEN
export PATH="/usr/bin:/bin:$PATH"
# kernelgate runs through a renamed symlink: a `pkill kernelgate` meant for someone else's
# server on a shared machine must not stop the one being measured.
mkdir -p "$WORK/bin"
ln -sf "$KG_BIN" "$WORK/bin/kg-bench-gateway"

# The TLS targets' certificate: self-signed for 127.0.0.1, made for this run; kg-bench and curl
# check the servers' certificates against it.
TLS_CERT="$WORK/tls/cert.pem" TLS_KEY="$WORK/tls/key.pem"
if [[ ",$TARGETS," == *"-tls,"* ]]; then
    mkdir -p "$WORK/tls"
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$TLS_KEY" -out "$TLS_CERT" 2> "$OUT/logs/openssl.log") ||
        { echo "run.sh: openssl could not make a certificate:" >&2; cat "$OUT/logs/openssl.log" >&2; exit 1; }
fi

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts a gateway; sets GW_PID and GW_URL.
# $1: kernelgate | kernelgate-sleep | kernelgate-busy-poll | kernelgate-warm | kernelgate-tls |
#     jupyter-server | jupyter-server-nodelay | jupyter-server-tls |
#     jupyter-server-front (nodelay, --gateway-url $2)
start_gateway() {
    local kind="$1" log="$OUT/logs/$1-$(date +%s%N).log" deadline port line
    deadline=$((SECONDS + 60))
    case "$kind" in
        kernelgate|kernelgate-sleep|kernelgate-busy-poll|kernelgate-warm|kernelgate-tls)
            local data="$WORK/kg-data" mode=()
            case "$kind" in
                kernelgate-sleep) data="$WORK/kg-data-sleep"; mode=(--predictive-poll 0) ;;
                kernelgate-busy-poll) data="$WORK/kg-data-poll"; mode=(--busy-poll "$BUSY_POLL") ;;
                kernelgate-warm) data="$WORK/kg-data-warm"; mode=(--warm-pool python3=1) ;;
                kernelgate-tls) data="$WORK/kg-data-tls"; mode=(--certfile "$TLS_CERT" --keyfile "$TLS_KEY") ;;
            esac
            rm -rf "$data"
            "$WORK/bin/kg-bench-gateway" serve --ip 127.0.0.1 --port 0 --data-dir "$data" \
                --auth-token "$TOKEN" --kernel-dir "$SHARE/kernels" --no-conda --log-level warn \
                --kernel-transport "$TRANSPORT" "${mode[@]}" \
                > "$log" 2>&1 &
            GW_PID=$!
            while :; do
                line="$(grep -o 'https\?://127\.0\.0\.1:[0-9]*/' "$log" | head -1 || true)"
                [ -n "$line" ] && break
                if ! kill -0 "$GW_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
                    echo "run.sh: kernelgate did not start; log $log:" >&2; tail -20 "$log" >&2; exit 1
                fi
                sleep 0.05
            done
            GW_URL="${line%/}"
            ;;
        jupyter-server|jupyter-server-nodelay|jupyter-server-tls|jupyter-server-front)
            port="$(free_port)"
            local extra=() scheme=http
            [ "$kind" != jupyter-server ] && extra=(--config="$SRC_DIR/jupyter_server_nodelay.py")
            if [ "$kind" = jupyter-server-tls ]; then
                extra+=(--ServerApp.certfile="$TLS_CERT" --ServerApp.keyfile="$TLS_KEY")
                scheme=https
            fi
            # A front runs no kernel itself: its REST calls and WebSockets go to the gateway.
            [ "$kind" = jupyter-server-front ] &&
                extra+=(--gateway-url="$2" --GatewayClient.auth_token="$TOKEN")
            "$PY" -m jupyter_server --ServerApp.token="$TOKEN" --no-browser --ServerApp.port="$port" \
                --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$WORK/jupyter/root" \
                --ServerApp.port_retries=0 --KernelManager.transport="$TRANSPORT" --allow-root \
                "${extra[@]}" > "$log" 2>&1 &
            GW_PID=$!
            GW_URL="$scheme://127.0.0.1:$port"
            ;;
    esac
    STARTED_PIDS+=("$GW_PID")
    local ca=()
    [[ "$GW_URL" == https://* ]] && ca=(--cacert "$TLS_CERT")
    until curl -sf -o /dev/null "${ca[@]}" -H "Authorization: token $TOKEN" "$GW_URL/api/kernelspecs"; do
        if ! kill -0 "$GW_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "run.sh: $kind did not answer; log $log:" >&2; tail -20 "$log" >&2; exit 1
        fi
        sleep 0.1
    done
}

stop_gateway() {  # $1: its pid (default GW_PID)
    local pid="${1:-$GW_PID}"
    stop_pid "$pid"
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}

# kg-bench with the counts of a kernel. $1 label, $2 kernel, $3 scenarios, rest: target args.
bench() {
    local label="$1" kernel="$2" scenarios="$3" file
    shift 3
    local counts=("${ECHO_ARGS[@]}") dialect=echo
    if [ "$kernel" = python3 ]; then counts=("${PY_ARGS[@]}"); dialect=python; fi
    file="$OUT/raw/$label-$kernel-$(echo "$scenarios" | tr ',' '+' | cut -c1-40)-$(date +%s%N).json"
    local log="$OUT/logs/$(basename "${file%.json}")"
    echo "== $label / $kernel: $scenarios" >&2
    if ! "$BENCH" --label "$label" --kernel "$kernel" --dialect "$dialect" --scenarios "$scenarios" \
            --repeat "${BENCH_REPEAT:-$REPEAT}" "${counts[@]}" --json "$file" "$@" > "$log.out" 2> "$log.err"; then
        echo "run.sh: kg-bench failed for $label/$kernel (log $log.err):" >&2
        tail -5 "$log.err" >&2
        return 1
    fi
    RAW_FILES+=("$file")
    cat "$log.out" >&2
}

gateway_args() {  # $1 protocol [$2 url $3 pid: another gateway than GW_*]
    local url="${2:-$GW_URL}"
    echo --target gateway --url "$url" --token "$TOKEN" --protocol "$1" \
        --gateway-pid "${3:-$GW_PID}"
    [[ "$url" == https://* ]] && echo --ca-file "$TLS_CERT"
    return 0
}

T0=$SECONDS
echo "run.sh: mode $MODE, $REPEAT repeat(s), targets $TARGETS, kernels $KERNELS, transport $TRANSPORT, busy poll $BUSY_POLL us; output $OUT" >&2
FAILED=0

# ---- 1. idle WebSockets and idle kernels on kernelgate ---------------------------------
# A fresh gateway for each run: memory freed by one run is reused by the next and would
# hide the cost.
idle_kernels() {  # $1: gateway kind (start_gateway); memory per idle echo kernel
    start_gateway "$1"
    # shellcheck disable=SC2046
    bench "$1" echo idle_kernels $(gateway_args v1) --idle-kernels "$IDLE_KERNELS" || FAILED=1
    stop_gateway
}
if has "$TARGETS" kernelgate && has "$KERNELS" echo; then
    for r in $(seq 1 "$REPEAT"); do
        start_gateway kernelgate
        # shellcheck disable=SC2046
        bench kernelgate echo idle_ws $(gateway_args v1) --idle "$IDLE_KG" || FAILED=1
        stop_gateway
        idle_kernels kernelgate
    done
fi
# The same idle WebSockets over TLS (wss): what each costs with its TLS state.
if has "$TARGETS" kernelgate-tls && has "$KERNELS" echo; then
    for r in $(seq 1 "$REPEAT"); do
        start_gateway kernelgate-tls
        # shellcheck disable=SC2046
        bench kernelgate-tls echo idle_ws $(gateway_args v1) --idle "$IDLE_KG" || FAILED=1
        stop_gateway
    done
fi

# ---- 2. direct ZeroMQ (the physical limit) and kernelgate, taking turns --------------------
# The ratios kernelgate/direct compare runs made minutes apart on a machine whose speed
# drifts (a shared VM). Each repeat runs both, one scenario set each, in alternating order
# (direct first, then kernelgate first, ...), so drift lands on both sides alike. report.py
# pools the repeats.
run_direct() {  # $1 kernel
    mkdir -p "$WORK/direct"
    BENCH_REPEAT=1 bench direct "$1" "$DATA_SCENARIOS" --target direct \
        --kernelspec "$SHARE/kernels/$1" --runtime-dir "$WORK/direct" --transport "$TRANSPORT" \
        || FAILED=1
}
run_kernelgate() {  # $1 kernel
    if has "$TARGETS" kernelgate; then
        # shellcheck disable=SC2046
        # The kernel start is also measured in pairs: a direct start of the same kernel
        # beside each of kernelgate's (pair_diff_ms), so that the drift of the kernel's own
        # start time (hundreds of ms for ipykernel) does not swamp the gateway's share.
        mkdir -p "$WORK/pair"
        # shellcheck disable=SC2046
        BENCH_REPEAT=1 bench kernelgate "$1" "$DATA_SCENARIOS" $(gateway_args v1) \
            --pair-kernelspec "$SHARE/kernels/$1" --runtime-dir "$WORK/pair" \
            --transport "$TRANSPORT" || FAILED=1
    fi
    if [ "$1" = echo ] && has "$TARGETS" kernelgate-legacy; then
        # shellcheck disable=SC2046
        BENCH_REPEAT=1 bench kernelgate-legacy echo "$LEGACY_SCENARIOS" $(gateway_args legacy) \
            || FAILED=1
    fi
    if has "$TARGETS" kernelgate-sleep; then
        # shellcheck disable=SC2046
        BENCH_REPEAT=1 bench kernelgate-sleep "$1" "$BUSY_POLL_SCENARIOS" \
            $(gateway_args v1 "$SLEEP_URL" "$SLEEP_PID") || FAILED=1
    fi
    if has "$TARGETS" kernelgate-busy-poll; then
        # shellcheck disable=SC2046
        BENCH_REPEAT=1 bench kernelgate-busy-poll "$1" "$BUSY_POLL_SCENARIOS" \
            $(gateway_args v1 "$POLL_URL" "$POLL_PID") || FAILED=1
    fi
    if has "$TARGETS" kernelgate-tls; then
        # shellcheck disable=SC2046
        BENCH_REPEAT=1 bench kernelgate-tls "$1" "$DATA_SCENARIOS" \
            $(gateway_args v1 "$TLS_URL" "$TLS_PID") || FAILED=1
    fi
}
KG_DATA=0
{ has "$TARGETS" kernelgate || has "$TARGETS" kernelgate-legacy || has "$TARGETS" kernelgate-tls ||
  has "$TARGETS" kernelgate-sleep || has "$TARGETS" kernelgate-busy-poll; } && KG_DATA=1
if has "$TARGETS" direct || [ "$KG_DATA" = 1 ]; then
    # Up to four kernelgates side by side (default, --predictive-poll 0, --busy-poll, TLS);
    # each idles (sleeps) while another is measured.
    if has "$TARGETS" kernelgate-sleep; then
        start_gateway kernelgate-sleep
        SLEEP_URL="$GW_URL" SLEEP_PID="$GW_PID"
    fi
    if has "$TARGETS" kernelgate-busy-poll; then
        start_gateway kernelgate-busy-poll
        POLL_URL="$GW_URL" POLL_PID="$GW_PID"
    fi
    if has "$TARGETS" kernelgate-tls; then
        start_gateway kernelgate-tls
        TLS_URL="$GW_URL" TLS_PID="$GW_PID"
    fi
    [ "$KG_DATA" = 1 ] && start_gateway kernelgate
    for r in $(seq 1 "$REPEAT"); do
        for kernel in echo echo-libzmq python3; do
            has "$KERNELS" "$kernel" || continue
            if [ $((r % 2)) = 1 ]; then
                has "$TARGETS" direct && run_direct "$kernel"
                [ "$KG_DATA" = 1 ] && run_kernelgate "$kernel"
            else
                [ "$KG_DATA" = 1 ] && run_kernelgate "$kernel"
                has "$TARGETS" direct && run_direct "$kernel"
            fi
        done
    done
    [ "$KG_DATA" = 1 ] && stop_gateway
    has "$TARGETS" kernelgate-sleep && stop_gateway "$SLEEP_PID"
    has "$TARGETS" kernelgate-busy-poll && stop_gateway "$POLL_PID"
    has "$TARGETS" kernelgate-tls && stop_gateway "$TLS_PID"
fi

# ---- 2b. kernelgate with a warm pool: kernel start (python3) --------------------------------
# A REST request always carries KERNEL_USERNAME, which only a Python kernel can be given after
# it started, so the pool serves python3 only. The starts are 1.5 s apart: ipykernel takes
# about 0.7 s to start, and each start has to find the pool refilled.
if has "$TARGETS" kernelgate-warm && has "$KERNELS" python3; then
    start_gateway kernelgate-warm
    pool_deadline=$((SECONDS + 90)) pool_ready=1
    until curl -sf -H "Authorization: token $TOKEN" "$GW_URL/metrics" |
            grep -q '^kernelgate_warm_pool_kernels{kernelspec="python3",state="ready"} 1$'; do
        if [ $SECONDS -ge $pool_deadline ] || ! kill -0 "$GW_PID" 2>/dev/null; then
            echo "run.sh: kernelgate-warm's pool was not ready within 90 s" >&2
            FAILED=1 pool_ready=0; break
        fi
        sleep 0.2
    done
    if [ "$pool_ready" = 1 ]; then
        # shellcheck disable=SC2046
        bench kernelgate-warm python3 start $(gateway_args v1) --start-gap-ms 1500 || FAILED=1
    fi
    stop_gateway
fi

# ---- 3. Jupyter Server, default and nodelay ------------------------------------------------
# idle_ws and idle_kernels need a fresh server for each repeat; the data-path scenarios then
# run on the last.
for t in jupyter-server jupyter-server-nodelay; do
    has "$TARGETS" "$t" || continue
    for r in $(seq 1 "$REPEAT"); do
        start_gateway "$t"
        if has "$KERNELS" echo; then
            # shellcheck disable=SC2046
            bench "$t" echo idle_ws $(gateway_args v1) --idle "$IDLE_JS" || FAILED=1
        fi
        if [ "$r" = "$REPEAT" ]; then
            for kernel in echo echo-libzmq python3; do
                has "$KERNELS" "$kernel" || continue
                # shellcheck disable=SC2046
                bench "$t" "$kernel" "$DATA_SCENARIOS" $(gateway_args v1) || FAILED=1
            done
        fi
        stop_gateway
        has "$KERNELS" echo && idle_kernels "$t"
    done
done

# ---- 3a. Jupyter Server (nodelay) over TLS: the data-path scenarios --------------------------
if has "$TARGETS" jupyter-server-tls; then
    start_gateway jupyter-server-tls
    if has "$KERNELS" echo; then
        # shellcheck disable=SC2046
        bench jupyter-server-tls echo idle_ws $(gateway_args v1) --idle "$IDLE_JS" || FAILED=1
    fi
    for kernel in echo echo-libzmq python3; do
        has "$KERNELS" "$kernel" || continue
        # shellcheck disable=SC2046
        bench jupyter-server-tls "$kernel" "$DATA_SCENARIOS" $(gateway_args v1) || FAILED=1
    done
    stop_gateway
fi

# ---- 3b. Jupyter Server in front of a gateway (--gateway-url) -------------------------------
# What users of Jupyter Server or JupyterLab with --gateway-url see: the same front (nodelay)
# in front of kernelgate, then of a second Jupyter Server acting as the gateway. Only the
# gateway behind the front differs; report.py sets both beside the front's own local kernels
# (jupyter-server-nodelay).
for t in front-kernelgate front-jupyter-server; do
    has "$TARGETS" "$t" || continue
    if [ "$t" = front-kernelgate ]; then
        start_gateway kernelgate
    else
        start_gateway jupyter-server-nodelay
    fi
    BACK_PID="$GW_PID" BACK_URL="$GW_URL"
    start_gateway jupyter-server-front "$BACK_URL"
    for kernel in echo echo-libzmq python3; do
        has "$KERNELS" "$kernel" || continue
        # The gateway behind the front runs the kernels: its pid gives gw_cpu_* (the CPU the
        # gateway spends serving the front) and kernel_cpu_*. The front's own CPU is in no
        # column, so total_cpu_* leaves it out.
        # shellcheck disable=SC2046
        bench "$t" "$kernel" "$DATA_SCENARIOS" $(gateway_args v1 "$GW_URL" "$BACK_PID") || FAILED=1
    done
    stop_gateway
    stop_gateway "$BACK_PID"
done

# ---- 4. one table, one JSON ----------------------------------------------------------------
CHECK=()
[ "$MODE" = quick ] && CHECK=(--check)
if [ ${#RAW_FILES[@]} -eq 0 ]; then
    echo "run.sh: no results" >&2
    exit 1
fi
"$PY" "$SRC_DIR/report.py" --mode "$MODE" --transport "$TRANSPORT" --busy-poll "$BUSY_POLL" --json "$JSON" "${CHECK[@]}" "${RAW_FILES[@]}" || FAILED=1
echo "run.sh: done in $((SECONDS - T0)) s; results $JSON, raw runs and logs in $OUT" >&2
exit "$FAILED"
