#!/usr/bin/env bash
# User-space instructions per request of the real release binary, counted by
# valgrind's callgrind: unlike CPU time, the count repeats to within a fraction
# of a percent on a busy shared machine, so it tells whether a change to the
# request path made it cheaper. Kernel work (the loopback TCP stack) is not
# counted: compare `strace -c` syscall counts for that.
#
# Caveat: under valgrind sha2 runs its portable code (no SHA-NI), so the HMAC
# of a 4 KiB body counts ~240k instructions that take ~4 µs natively; compare
# signed runs with each other, not with passthrough.
#
#   bench/instructions.sh [requests per mode, default 3000]
source "$(dirname "$0")/lib.sh"
N=${1:-3000}
command -v valgrind >/dev/null || { echo "bench: install valgrind" >&2; exit 1; }
command -v callgrind_control >/dev/null || { echo "bench: callgrind_control missing" >&2; exit 1; }
build

export PERSONA_WEBHOOK_SECRET=wbhsec_bench_secret
UP=$(free_port); LISTEN=$(free_port); ADMIN=$(free_port)
"$BIN" echo --listen "127.0.0.1:$UP" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$UP"
cat >"$WORK/pg.toml" <<TOML
[listen]
address = "127.0.0.1:$LISTEN"
[admin]
address = "127.0.0.1:$ADMIN"
[server]
threads = 1
[upstream]
address = "127.0.0.1:$UP"
[[route]]
path = "/webhooks/persona"
secrets = ["env:PERSONA_WEBHOOK_SECRET"]
TOML
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
  "$BIN" run --config "$WORK/pg.toml" >"$WORK/pg.log" 2>&1 & VG=$!
PIDS+=($VG)
wait_port "$LISTEN"

load() { # mode path count -> "requests ok"
  "$LOADGEN" --target "127.0.0.1:$LISTEN" --mode "$1" --path "$2" --connections 16 \
    --duration 300s --max-requests "$3" |
    python3 -c 'import json,sys; o=json.load(sys.stdin); print(o["requests"], o["ok"])'
}

load plain /x 300 >/dev/null # warm up pools and caches
load signed /webhooks/persona 300 >/dev/null
echo "persona-guard: user-space instructions per request (callgrind, $N requests per mode, ~4 KiB bodies)"
for m in "plain /x passthrough" "signed /webhooks/persona verified+forwarded"; do
  set -- $m
  callgrind_control -z "$VG" >/dev/null 2>&1
  read -r sent ok < <(load "$1" "$2" "$N")
  callgrind_control -d "$VG" >/dev/null 2>&1
  sleep 1
  dump=$(ls -t "$WORK"/cg."$VG"* | head -1)
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  [ "$ok" = "$N" ] || echo "  warning: $ok of $sent answered 2xx" >&2
  printf '  %-20s %9d instructions/request\n' "$3" $((total / N))
done
