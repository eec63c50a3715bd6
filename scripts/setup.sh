#!/usr/bin/env bash
# Installs what redkit's tests and examples need on Debian/Ubuntu, when missing:
#   redis-server (the tests start real servers), libssl-dev and pkg-config (native-tls),
#   jq (scripts/msrv.sh).
# As root it installs them with apt-get; otherwise it prints the one command to run.
# Sourced by scripts/test.sh and scripts/tour.sh.
set -euo pipefail

redkit_missing_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || [ -n "${REDKIT_REDIS_SERVER:-}" ] || missing+=(redis-server)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    # scripts/msrv.sh reads `cargo metadata` with jq.
    command -v jq >/dev/null 2>&1 || missing+=(jq)
    if ! pkg-config --exists openssl 2>/dev/null; then
        missing+=(libssl-dev)
    fi
    echo "${missing[@]}"
}

redkit_setup() {
    local missing
    missing=$(redkit_missing_packages)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "redkit setup: installing $missing" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        # shellcheck disable=SC2086
        apt-get install -y -qq $missing >/dev/null
        # Debian starts a system redis-server on 6379; redkit's tests start their own.
        return 0
    fi
    echo "redkit setup: missing $missing. Install with:" >&2
    echo "    sudo apt-get install -y $missing" >&2
    exit 1
}

redkit_setup
