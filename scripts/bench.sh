#!/usr/bin/env bash
# Runs the benchmarks (as root) and rewrites their sections of BENCHMARKS.md.
#   scripts/bench.sh [socket|discovery|cgroup|netstack|http|sockops|scale|scrape-memory|all] [--rounds N] [--seconds S] [--connections C]
#   (scale takes --pods 10,100,500,1100 --open 1000,10000,100000 --rates 1000,2500,5000,10000,0 --rate-seconds 6;
#   it writes bench/plots/scale-*.svg)
#   (scrape-memory also takes --compare PATH: another exporter binary measured beside this one)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo build --release --quiet -p pmoas-exporter -p pmoas-bench -p pmoas-testbed
exec target/release/pmoas-bench "$@"
