#!/usr/bin/env bash
# Runs redkit's whole test suite (unit, integration against real redis-server processes,
# doc tests), installing what it needs first. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# --workspace: the library and the `redkit` command line (cli/).
exec cargo test --workspace "$@"
