#!/usr/bin/env bash
# Installs what building and testing persona-guard needs on a fresh Debian/Ubuntu
# machine: cmake (pingora's zlib-ng build script), a C compiler, and
# redis-server (the Redis replay store's tests start their own on loopback).
# Idempotent.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo is missing; install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
}
