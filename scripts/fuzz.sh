#!/usr/bin/env bash
# A longer run of every property test (the parsers of packed RESP, URLs, INFO text, key
# positions, keyspace flags, durations) than the normal test run's 256 cases each, and of
# the hostile-server tests. For local use: `scripts/fuzz.sh [cases]` (default 100000).
# Prints one summary line per test binary; the last result goes in the README's testing
# section.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cases="${1:-100000}"
export REDKIT_FUZZ_CASES="$cases"
start=$(date +%s)
cargo test --release --lib properties 2>&1 | grep -E "^test .*properties|test result"
cargo test --release --test properties 2>&1 | grep -E "^test |test result"
cargo test --release --test hostile 2>&1 | grep -E "^test |test result"
echo "fuzz: ${cases} cases per property, $(( $(date +%s) - start )) s"
