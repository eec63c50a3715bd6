#!/usr/bin/env bash
# Runs every benchmark (each starts its own redis-server), then renders the results
# (target/redkit-bench.json) as BENCHMARKS.md. Run it on a quiet machine: each bench records
# the load average at its start and end, and BENCHMARKS.md shows them.
# Extra arguments go to `cargo bench` (for example `--bench pool`; the other benches' last
# results stay in the JSON file and in the rendering).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo bench "$@"
cargo bench -q --bench report > BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
echo "written: BENCHMARKS.md (from target/redkit-bench.json)"
