#!/usr/bin/env bash
# Licences, bans and sources of every dependency (cargo-deny, offline), per
# deny.toml. Installs cargo-deny when missing. Advisories need the RustSec
# database from GitHub: run `cargo deny check advisories` where it can be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked
cargo deny --offline check licenses bans sources
