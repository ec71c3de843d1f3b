# Shared helpers for the benchmark scripts (sourced). Loopback only; every
# process started here is stopped by its own PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release/persona-guard
LOADGEN=$ROOT/target/release/examples/loadgen
BARE=$ROOT/target/release/examples/bare_proxy
WORK=$(mktemp -d /tmp/pg-bench.XXXXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A port that is free now (from the kernel's ephemeral range).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until a TCP port on 127.0.0.1 accepts (at most 20 s).
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
  awk -v tck="$(getconf CLK_TCK)" '{ print ($14 + $15) / tck }' "/proc/$1/stat"
}

# Peak resident set (VmHWM) of a process, in KiB.
peak_rss_kib() {
  awk '/VmHWM/ { print $2 }' "/proc/$1/status"
}

json_field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

build() {
  (cd "$ROOT" && cargo build --release --locked --bin persona-guard --example loadgen --example bare_proxy >&2)
}
