#!/usr/bin/env bash
# Runs the tour example: against $REDIS_URL when set, else against a throwaway local
# redis-server that the example starts and stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo run --example tour "$@"
