#!/usr/bin/env bash
# `make bench`: install wrk (Debian/Ubuntu package) if it is missing and this user may.
# Without it, `python -m bench.service` falls back to its Python load generator and says
# so in docs/benchmarks.md.
set -uo pipefail

if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "wrk not found and no apt-get: bench.service will use its Python load generator" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "wrk not found (install it: apt-get install wrk); bench.service will use its" \
         "Python load generator" >&2
    exit 0
fi
echo "installing wrk with apt-get" >&2
$SUDO apt-get install -y -qq wrk >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq wrk >/dev/null 2>&1; } \
    || echo "could not install wrk; bench.service will use its Python load generator" >&2
exit 0
