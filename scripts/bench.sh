#!/usr/bin/env bash
# Runs every benchmark (each starts its own redis-server), then renders the results as the
# Markdown table of the README's "Performance" section into target/redkit-bench.md.
# Extra arguments go to `cargo bench` (for example `--bench pool`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo bench "$@"
cargo bench -q --bench report > target/redkit-bench.md
echo "table written to target/redkit-bench.md"
