#!/usr/bin/env bash
# Runs every check and test persona-guard has, from a fresh machine:
# formatting, clippy, unit + property + end-to-end tests, and `check` on every
# shipped config file.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo build"
cargo build --locked --all-targets
echo "== persona-guard check on shipped configs"
for f in config/*.toml; do
  PERSONA_WEBHOOK_SECRET=ci-placeholder-secret ./target/debug/persona-guard check --config "$f"
done
echo "== cargo test"
cargo test --locked --all-targets
