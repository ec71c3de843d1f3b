#!/usr/bin/env bash
# The load benchmark (see bench/run.py): builds the release binary and the load
# generator, installs nginx and the nginx + Lua peer's Debian packages when
# missing, prints the table. ~8 minutes (5 interleaved rounds per peer for the CPU figures).
#   bench/run.sh                     (BENCH_SECONDS=8 BENCH_CONNECTIONS=64 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --build
pkgs=()
command -v nginx >/dev/null 2>&1 || pkgs+=(nginx-light)
if [ "${BENCH_NGINX_LUA:-1}" != 0 ]; then
  for p in libnginx-mod-http-lua lua-resty-core lua-luaossl lua-cjson; do
    dpkg -s "$p" >/dev/null 2>&1 || pkgs+=("$p")
  done
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
cargo build --release --locked --bin persona-guard --example loadgen --example bare_proxy >&2
python3 bench/run.py
