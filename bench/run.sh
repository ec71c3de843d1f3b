#!/usr/bin/env bash
# The load benchmark (see bench/run.py): builds the release binary and the load
# generator, installs nginx when missing, prints the table. ~2.5 minutes.
#   bench/run.sh                     (BENCH_SECONDS=8 BENCH_CONNECTIONS=64 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --build
if ! command -v nginx >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release --locked --bin persona-guard --example loadgen --example bare_proxy >&2
python3 bench/run.py
