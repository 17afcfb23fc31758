#!/usr/bin/env bash
# Runs the benchmarks (as root) and rewrites their sections of BENCHMARKS.md.
#   scripts/bench.sh [socket|discovery|cgroup|netstack|http|sockops|scrape-memory|all] [--rounds N] [--seconds S] [--connections C]
#   (scrape-memory also takes --compare PATH: another exporter binary measured beside this one)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo build --release --quiet -p pmoas-exporter -p pmoas-bench -p pmoas-testbed
exec target/release/pmoas-bench "$@"
