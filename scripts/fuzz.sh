#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for SECONDS (default 30), seeded
# from fuzz/seeds/. Only a stable toolchain is available here, so nightly-only
# flags are enabled with RUSTC_BOOTSTRAP=1 (libFuzzer + AddressSanitizer).
# Installs cargo-fuzz when missing. A crash fails the script and leaves the
# input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in signature_header route_decision framing_check event_extract config_load; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|.*cov: )" | tail -n 3
done
