# SPDX-License-Identifier: BSD-3-Clause
# Sourced by tools/run.sh. serve_args ARG...: prints, one per line, the arguments for
# `kernelgate serve`: tools/run.sh's defaults (--ip 127.0.0.1 --port 8888) for the options the
# caller did not give, then the caller's own. `kernelgate serve` takes each option once.
serve_args() {
    local a ip=1 port=1
    for a in "$@"; do
        case "$a" in
            --ip|--ip=*) ip=0 ;;
            --port|--port=*) port=0 ;;
        esac
    done
    if [ "$ip" = 1 ]; then printf '%s\n' --ip 127.0.0.1; fi
    if [ "$port" = 1 ]; then printf '%s\n' --port 8888; fi
    if [ "$#" -gt 0 ]; then printf '%s\n' "$@"; fi
}
