#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# bench/fanout_split.sh: how much of the fan-out gap is one event loop's.
#
# kernelgate runs its whole data path on one thread. On a machine with few cores, the fan-out
# scenario (K busy kernels, one client each) keeps every core busy, and the question is whether
# a second loop would turn idle CPU into round trips. This script answers it without a
# multi-loop gateway: it runs the same K kernels' round trips in five ways, side by side, in
# rotating order, and prints the aggregate round trips per second of each:
#
#   gw-1x      one kg-bench client process, K kernels, one kernelgate (issue 4's fan-out)
#   direct-1x  one kg-bench direct ZeroMQ client process, K kernels (its baseline)
#   gw-2c-1g   two client processes, K/2 kernels each, both on the same kernelgate (one loop)
#   gw-2c-2g   two client processes, K/2 kernels each, each on its own kernelgate (two loops)
#   direct-2x  two direct client processes, K/2 kernels each (the baseline of the two above)
#
# The two processes of a pair run at once for the same number of seconds (kg-bench
# --fanout-budget with an unreachable round-trip count), so their rates add up. The ratio
# gw-2c-2g / gw-2c-1g is what a second loop gives with the same clients; gw-2c-2g / direct-2x
# is how close two loops come to the limit.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/fanout_split.sh [options]

Fan-out through one kernelgate against two (a second event loop), and both against direct
ZeroMQ, with the echo kernel. Prints a table of medians and ratios; exits non-zero if any run
failed.

Options:
  --build-dir DIR    where kernelgate, kg-bench and kg-echo-kernel are (default: build)
  --kernels K        kernels in all, an even number (default 32)
  --seconds S        seconds each configuration runs (default 3)
  --repeat N         rounds; each runs all five configurations, in rotating order (default 3)
  --transport T      ipc or tcp: how gateway and direct clients reach the kernels (default ipc)
  --quick            one round of 0.5 s with 8 kernels (a smoke run)
  --json FILE        also write every run's rates as JSON
  -h, --help         this text
EOF
}

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="$SRC_DIR/../build"
K=32 SECS=3 REPEAT=3 TRANSPORT=ipc JSON=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) BUILD_DIR="$2"; shift 2 ;;
        --kernels) K="$2"; shift 2 ;;
        --seconds) SECS="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --transport) TRANSPORT="$2"; shift 2 ;;
        --quick) K=8 SECS=0.5 REPEAT=1; shift ;;
        --json) JSON="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fanout_split.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$K" =~ ^[0-9]+$ ]] || [ "$K" -lt 2 ] || [ $((K % 2)) -ne 0 ]; then
    echo "fanout_split.sh: --kernels must be an even number >= 2" >&2; exit 2
fi
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "fanout_split.sh: --repeat must be >= 1" >&2; exit 2; }
[[ "$TRANSPORT" == ipc || "$TRANSPORT" == tcp ]] ||
    { echo "fanout_split.sh: --transport is ipc or tcp" >&2; exit 2; }
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
for b in kernelgate kg-bench kg-echo-kernel; do
    [ -x "$BUILD_DIR/$b" ] || { echo "fanout_split.sh: $BUILD_DIR/$b is missing; build it first" >&2; exit 2; }
done
PY="$(command -v python3)"

WORK="$(mktemp -d /tmp/kg-fanout-split.XXXXXX)"
GW_PIDS=()
cleanup() {
    local pid
    for pid in "${GW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${GW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/kernels/echo" "$WORK/bin" "$WORK/runs"
cat > "$WORK/kernels/echo/kernel.json" <<EOF
{"argv": ["$BUILD_DIR/kg-echo-kernel", "-f", "{connection_file}"], "display_name": "kg echo",
 "language": "echo", "interrupt_mode": "message"}
EOF
# A renamed symlink, as in run.sh: a `pkill kernelgate` meant for another server misses it.
ln -sf "$BUILD_DIR/kernelgate" "$WORK/bin/kg-bench-gateway"
TOKEN="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')"
export KG_BENCH_TOKEN="$TOKEN"

start_gateway() {  # $1 name; sets GW_URL and GW_PID
    local log="$WORK/gw-$1.log" line="" i
    (umask 077 && : > "$log")
    "$WORK/bin/kg-bench-gateway" serve --ip 127.0.0.1 --port 0 --data-dir "$WORK/data-$1" \
        --auth-token "$TOKEN" --kernel-dir "$WORK/kernels" --no-conda --log-level warn \
        --kernel-transport "$TRANSPORT" > "$log" 2>&1 &
    GW_PID=$!
    GW_PIDS+=("$GW_PID")
    for i in $(seq 1 300); do
        line="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -1 || true)"
        [ -n "$line" ] && break
        kill -0 "$GW_PID" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$line" ] || { echo "fanout_split.sh: kernelgate $1 did not start:" >&2; tail -20 "$log" >&2; exit 1; }
    GW_URL="$line"
}
start_gateway a
URL_a="$GW_URL" PID_a="$GW_PID"
start_gateway b
URL_b="$GW_URL" PID_b="$GW_PID"

RUN_N=0
# One kg-bench fan-out run in the background; its JSON goes to $WORK/runs/<config>.<round>.<n>.json.
client() {  # $1 config $2 round $3 kernels; the rest: kg-bench target options
    local cfg="$1" round="$2" k="$3"; shift 3
    RUN_N=$((RUN_N + 1))
    "$BUILD_DIR/kg-bench" --scenarios fanout --repeat 1 --fanout "$k" --fanout-rt 100000000 \
        --fanout-budget "$SECS" --budget 60 --timeout 30 "$@" \
        --json "$WORK/runs/$cfg.$round.$RUN_N.json" > "$WORK/runs/$cfg.$round.$RUN_N.log" 2>&1 &
}
gw() {  # $1 url $2 gateway pid
    echo --target gateway --url "$1" --token "$TOKEN" --kernel echo --gateway-pid "$2"
}
direct() {  # $1 runtime dir
    mkdir -p "$WORK/$1"
    echo --target direct --kernelspec "$WORK/kernels/echo" --transport "$TRANSPORT" \
        --runtime-dir "$WORK/$1"
}
H=$((K / 2))
run_config() {  # $1 config $2 round
    # shellcheck disable=SC2046
    case "$1" in
        gw-1x) client "$1" "$2" "$K" $(gw "$URL_a" "$PID_a") ;;
        direct-1x) client "$1" "$2" "$K" $(direct d1) ;;
        gw-2c-1g) client "$1" "$2" "$H" $(gw "$URL_a" "$PID_a")
                  client "$1" "$2" "$H" $(gw "$URL_a" "$PID_a") ;;
        gw-2c-2g) client "$1" "$2" "$H" $(gw "$URL_a" "$PID_a")
                  client "$1" "$2" "$H" $(gw "$URL_b" "$PID_b") ;;
        direct-2x) client "$1" "$2" "$H" $(direct d1)
                   client "$1" "$2" "$H" $(direct d2) ;;
    esac
    local failed=0 pid
    for pid in $(jobs -p); do
        [[ " ${GW_PIDS[*]} " == *" $pid "* ]] && continue
        wait "$pid" || failed=1
    done
    if [ "$failed" = 1 ]; then
        echo "fanout_split.sh: a kg-bench run of $1 failed:" >&2
        tail -5 "$WORK/runs/$1.$2".*.log >&2
        exit 1
    fi
}

CONFIGS=(gw-1x direct-1x gw-2c-1g gw-2c-2g direct-2x)
echo "fanout_split.sh: $K kernels, $SECS s per configuration, $REPEAT round(s), transport $TRANSPORT" >&2
for r in $(seq 1 "$REPEAT"); do
    n=${#CONFIGS[@]}
    for i in $(seq 0 $((n - 1))); do
        cfg="${CONFIGS[$(((i + r - 1) % n))]}"
        echo "fanout_split.sh: round $r, $cfg" >&2
        run_config "$cfg" "$r"
    done
done

"$PY" - "$WORK/runs" "$K" "$JSON" <<'EOF'
import glob, json, os, statistics, sys
runs_dir, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
configs = ["gw-1x", "direct-1x", "gw-2c-1g", "gw-2c-2g", "direct-2x"]
rounds = {}   # config -> round -> {"rt_per_s": sum, "gw_cpu": [...], ...}
for f in sorted(glob.glob(os.path.join(runs_dir, "*.json"))):
    cfg, rnd = os.path.basename(f).split(".")[:2]
    doc = json.load(open(f))
    sc = doc["scenarios"].get("fanout", {})
    if "median" not in sc:
        sys.exit(f"fanout_split.sh: {f}: no fan-out result: {sc}")
    m = sc["median"]
    key = [x for x in m if x.endswith("_rt_per_s")]
    if len(key) != 1:
        sys.exit(f"fanout_split.sh: {f}: no rate in {sorted(m)}")
    pre = key[0][: -len("rt_per_s")]
    r = rounds.setdefault(cfg, {}).setdefault(rnd, {"rt_per_s": 0.0, "clients": 0, "gw_us_per_s": []})
    r["rt_per_s"] += m[key[0]]
    r["clients"] += 1
    # Each client divides the gateway's CPU time over its run by its own round trips.
    if pre + "gw_cpu_us_per_rt" in m:
        r["gw_us_per_s"].append(m[pre + "gw_cpu_us_per_rt"] * m[key[0]])
want = {"gw-1x": 1, "direct-1x": 1, "gw-2c-1g": 2, "gw-2c-2g": 2, "direct-2x": 2}
for cfg in configs:
    if cfg not in rounds:
        sys.exit(f"fanout_split.sh: no result for {cfg}")
    for rnd, r in rounds[cfg].items():
        if r["clients"] != want[cfg] or r["rt_per_s"] <= 0:
            sys.exit(f"fanout_split.sh: {cfg} round {rnd}: {r['clients']} client result(s), {r['rt_per_s']} rt/s")
med = {c: statistics.median(r["rt_per_s"] for r in rounds[c].values()) for c in configs}
def per_round(a, b):
    return [rounds[a][x]["rt_per_s"] / rounds[b][x]["rt_per_s"] for x in sorted(rounds[a]) if x in rounds[b]]
print(f"fan-out of {k} echo kernels, aggregate round trips per second (median of {len(rounds['gw-1x'])} round(s))")
print(f"{'configuration':<12} {'rt/s':>10}  {'gateway CPU us/rt':>18}  per round")
for c in configs:
    # The gateway's CPU per round trip of the whole configuration: two clients of one
    # gateway saw the same gateway (their mean), two gateways add up.
    agg = statistics.mean if c == "gw-2c-1g" else sum
    cpu = [agg(r["gw_us_per_s"]) / r["rt_per_s"] for r in rounds[c].values() if r["gw_us_per_s"]]
    cpu_s = f"{statistics.median(cpu):.1f}" if cpu else "-"
    print(f"{c:<12} {med[c]:>10.0f}  {cpu_s:>18}  " + " ".join(f"{r['rt_per_s']:.0f}" for _, r in sorted(rounds[c].items())))
ratios = [("gw-1x / direct-1x", "gw-1x", "direct-1x", "issue 4's fan-out against the limit"),
          ("gw-2c-1g / direct-2x", "gw-2c-1g", "direct-2x", "two clients, one loop"),
          ("gw-2c-2g / direct-2x", "gw-2c-2g", "direct-2x", "two clients, two loops"),
          ("gw-2c-2g / gw-2c-1g", "gw-2c-2g", "gw-2c-1g", "what the second loop gives")]
print()
print(f"{'ratio':<22} {'median':>7}  per round")
result = {"kernels": k, "rates": {c: {x: r["rt_per_s"] for x, r in rounds[c].items()} for c in configs}, "ratios": {}}
for name, a, b, what in ratios:
    pr = per_round(a, b)
    result["ratios"][name] = statistics.median(pr)
    print(f"{name:<22} {statistics.median(pr):>7.2f}  " + " ".join(f"{x:.2f}" for x in pr) + f"   ({what})")
if out:
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
EOF
