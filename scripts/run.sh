#!/usr/bin/env bash
# Builds and runs the exporter on this host with the default collectors
# (no cluster needed), as root:  scripts/run.sh [pmoas-exporter flags...]
# e.g. scripts/run.sh --web.listen-address 127.0.0.1:8765
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cargo build --release --quiet -p pmoas-exporter
exec target/release/pmoas-exporter "$@"
