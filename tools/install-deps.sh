#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Installs everything kernelgate needs from Debian 12 packages.
#   tools/install-deps.sh          build + run dependencies (incl. python3-ipykernel)
#   tools/install-deps.sh --test   plus what the test suite uses (jupyter_server, notebook,
#                                  chromium, node/npm clients, valgrind for the profiling smoke)
set -euo pipefail
want_test=0
for a in "$@"; do
    case "$a" in
        --test) want_test=1 ;;
        -h|--help) sed -n 3,6p "$0"; exit 0 ;;
        *) echo "unknown option: $a" >&2; exit 2 ;;
    esac
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
build_pkgs=(build-essential cmake pkg-config git
    libzmq3-dev cppzmq-dev libboost-dev libssl-dev nlohmann-json3-dev catch2
    libsqlite3-dev sqlite3 libspdlog-dev libfmt-dev libcli11-dev
    python3 python3-ipykernel python3-jupyter-client)
test_pkgs=(python3-pytest python3-jupyter-server python3-notebook python3-websocket python3-requests
    chromium nodejs npm curl procps openssl valgrind)
pkgs=("${build_pkgs[@]}")
[ "$want_test" -eq 1 ] && pkgs+=("${test_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Node may come from another apt source that already provides npm; do not fight it.
if command -v node >/dev/null && command -v npm >/dev/null; then
    tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done
    missing=("${tmp[@]+"${tmp[@]}"}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "[install-deps] installing: ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "[install-deps] all Debian packages present"
fi
