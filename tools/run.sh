#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Installs the dependencies (Debian 12 packages, including python3-ipykernel so a python3
# kernel exists), builds kernelgate and starts it on 127.0.0.1:8888 with local kernels.
# It prints the URL and the token to connect with. Extra arguments go to `kernelgate serve`
# (see `build/kernelgate serve --help`), e.g. tools/run.sh --port 9000 --auth-token mytoken
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n 3,6p "$0"; exit 0 ;;
esac
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
echo "[run] configuring and building (this takes a few minutes the first time)..."
source tools/cmake-flags.sh
cmake -S . -B build "${run_cmake_flags[@]}" >/dev/null
cmake --build build -j"$(nproc)" --target kernelgate
echo "[run] starting kernelgate; stop it with Ctrl-C"
source tools/serve-args.sh
mapfile -t args < <(serve_args "$@")
exec ./build/kernelgate serve "${args[@]}"
