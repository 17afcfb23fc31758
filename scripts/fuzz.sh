#!/usr/bin/env bash
# Fuzzes the parsers of protocols/ (pmoas-protocols) with libFuzzer, on
# stable Rust: each target in protocols/fuzz/ runs for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    (default: 60 s; http1 http2 hpack)
#
# No nightly and no cargo-fuzz: libfuzzer-sys (crates.io) builds libFuzzer
# from its C++ sources, and rustc's stable codegen options add the coverage
# instrumentation libFuzzer feeds on (-C passes=sancov-module and its LLVM
# options). No sanitizer (AddressSanitizer needs nightly): the targets are
# safe Rust, so what is looked for is panics (debug assertions and overflow
# checks on), hangs (-timeout) and memory growth (the targets assert the
# parsers' size accessors against their Limits; -rss_limit_mb and
# -malloc_limit_mb catch the rest). The corpus grows in
# target/fuzz/corpus/TARGET, seeded from protocols/fuzz/seeds/TARGET; a
# crash leaves its input in target/fuzz/artifacts/TARGET/ and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http1 http2 hpack)

# libFuzzer is C++: libfuzzer-sys compiles it with the system's compiler.
if ! command -v c++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "fuzz: a C++ compiler (g++ or clang++) is needed" >&2
    exit 1
  fi
fi

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$PWD/target/fuzz"
# --target keeps the instrumentation off build scripts and proc macros.
export RUSTFLAGS="-C passes=sancov-module \
  -C llvm-args=-sanitizer-coverage-level=4 \
  -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
  -C llvm-args=-sanitizer-coverage-pc-table \
  -C llvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing"
cargo build --quiet --release --manifest-path protocols/fuzz/Cargo.toml --target "$host" --bins

status=0
for t in "${targets[@]}"; do
  bin="$CARGO_TARGET_DIR/$host/release/$t"
  corpus="$CARGO_TARGET_DIR/corpus/$t"
  artifacts="$CARGO_TARGET_DIR/artifacts/$t"
  log="$CARGO_TARGET_DIR/$t.log"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [ -d "protocols/fuzz/seeds/$t" ] && seeds=("protocols/fuzz/seeds/$t")
  if "$bin" "$corpus" "${seeds[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
    -malloc_limit_mb=256 -max_len=8192 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz $t: ${seconds}s, ${runs:-?} runs, ${cov:-cov: ?}, no crash"
  else
    echo "fuzz $t: FAILED (input in $artifacts/)" >&2
    tail -n 40 "$log" >&2
    status=1
  fi
done
exit "$status"
