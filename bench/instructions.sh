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
# Three proxies, one after the other, in the same run and against the same
# upstream (persona-guard's `echo`): persona-guard, examples/bare_proxy.rs
# (pingora's few-line proxy_pass, the floor of the foundation) and nginx.
#
#   bench/instructions.sh [requests per mode, default 3000]
#   BENCH_KEEP_DUMPS=DIR bench/instructions.sh 2000   # also keeps each row's
#       callgrind dump in DIR (pg-plain.cg, pg-signed.cg, bare-*.cg, nginx-*.cg)
#       for `callgrind_annotate --inclusive=yes DIR/pg-signed.cg`
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

KEEP=${BENCH_KEEP_DUMPS:-}
[ -z "$KEEP" ] || mkdir -p "$KEEP"

# Zeroes the counters of callgrind process $1, sends $N requests of mode $2 to
# path $3 on port $4, dumps, and prints the instructions per request; with
# BENCH_KEEP_DUMPS the dump is kept as $5.cg.
count() {
  local vg=$1 mode=$2 path=$3 port=$4 row=$5 sent ok dump total
  callgrind_control -z "$vg" >/dev/null 2>&1
  read -r sent ok < <(load "$mode" "$path" "$N" "$port")
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 1
  dump=$(ls -t "$WORK"/cg."$vg"* | head -1)
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  cp "$dump" "$WORK/$row.cg"
  [ -z "$KEEP" ] || cp "$dump" "$KEEP/$row.cg"
  [ "$ok" = "$N" ] || echo "  warning: $ok of $sent answered 2xx" >&2
  echo $((total / N))
}

load() { # mode path count port -> "requests ok"
  "$LOADGEN" --target "127.0.0.1:$4" --mode "$1" --path "$2" --connections 16 \
    --duration 300s --max-requests "$3" |
    python3 -c 'import json,sys; o=json.load(sys.stdin); print(o["requests"], o["ok"])'
}

load plain /x 300 "$LISTEN" >/dev/null # warm up pools and caches
load signed /webhooks/persona 300 "$LISTEN" >/dev/null
pg_plain=$(count "$VG" plain /x "$LISTEN" pg-plain)
pg_signed=$(count "$VG" signed /webhooks/persona "$LISTEN" pg-signed)

# The same verified deliveries with the delivery spool armed but unused
# (`spool = "on_failure"`, the app answering 200): what arming it costs.
SP_LISTEN=$(free_port); SP_ADMIN=$(free_port)
sed -e "s/127.0.0.1:$LISTEN/127.0.0.1:$SP_LISTEN/" -e "s/127.0.0.1:$ADMIN/127.0.0.1:$SP_ADMIN/" \
  "$WORK/pg.toml" >"$WORK/pg-spool.toml"
printf 'spool = "on_failure"\n[spool]\ndir = "%s"\n' "$WORK/spool" >>"$WORK/pg-spool.toml"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
  "$BIN" run --config "$WORK/pg-spool.toml" >"$WORK/pg-spool.log" 2>&1 & SVG=$!
PIDS+=($SVG)
wait_port "$SP_LISTEN"
load signed /webhooks/persona 300 "$SP_LISTEN" >/dev/null
pg_spool=$(count "$SVG" signed /webhooks/persona "$SP_LISTEN" pg-spool-armed)
kill "$SVG" 2>/dev/null || true

# The floor: pingora's own few-line proxy (examples/bare_proxy.rs), one thread,
# forwarding the same plain and signed requests (it verifies nothing).
BARE_PORT=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
  "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP" >"$WORK/bare.log" 2>&1 & BVG=$!
PIDS+=($BVG)
wait_port "$BARE_PORT"
load plain /x 300 "$BARE_PORT" >/dev/null
load signed /webhooks/persona 300 "$BARE_PORT" >/dev/null
bare_plain=$(count "$BVG" plain /x "$BARE_PORT" bare-plain)
bare_signed=$(count "$BVG" signed /webhooks/persona "$BARE_PORT" bare-signed)

# The yardstick: nginx as a plain proxy_pass with upstream keep-alive, one
# process (no master), under the same counter.
NGINX_ROW=""
if command -v nginx >/dev/null; then
  NGX=$(free_port)
  cat >"$WORK/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_buffer_size 2m;
  client_max_body_size 2m;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    nginx -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 & NVG=$!
  PIDS+=($NVG)
  wait_port "$NGX"
  load plain /x 300 "$NGX" >/dev/null
  ngx_plain=$(count "$NVG" plain /x "$NGX" nginx-plain)
  ngx_signed=$(count "$NVG" signed /webhooks/persona "$NGX" nginx-signed)
fi

echo "user-space instructions per request (callgrind, $N requests per row, ~4 KiB bodies)"
printf '  %-50s %9s %9s\n' "" "plain" "signed"
printf '  %-50s %9d %9d\n' "persona-guard (passthrough / verified+forwarded)" "$pg_plain" "$pg_signed"
printf '  %-50s %9s %9d\n' "persona-guard, spool armed (on_failure, app up)" "-" "$pg_spool"
printf '  %-50s %9d %9d\n' "bare pingora proxy (examples/bare_proxy.rs)" "$bare_plain" "$bare_signed"
if [ -n "${ngx_plain:-}" ]; then
  printf '  %-50s %9d %9d\n' "nginx proxy_pass (no verification)" "$ngx_plain" "$ngx_signed"
fi
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# The HMAC under valgrind: sha2 finds no SHA extensions there and runs its
# portable code (~57 instructions per byte); natively, with SHA-NI, its loop is
# 164 instructions per 64-byte block (objdump of sha2's x86 `digest_blocks`),
# some 12,000 for a ~4 KiB delivery. So the verified row is also given with
# the HMAC set aside, which is what the CPU does besides it.
hmac_total=$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$WORK/pg-signed.cg" 2>/dev/null |
  awk '/signature::hmac_of \[/ && !seen { gsub(",", "", $1); print $1; seen = 1 }')
pg_signed_net=$((pg_signed - ${hmac_total:-0} / N))
printf '  %-50s %9s %9d\n' "persona-guard verified, the HMAC set aside" "-" "$pg_signed_net"
printf '  %-50s %9s %9s\n' "spool armed / spool off" "-" "$(ratio "$pg_spool" "$pg_signed")x"
printf '  %-50s %9s %9s\n' "persona-guard / bare pingora" \
  "$(ratio "$pg_plain" "$bare_plain")x" "$(ratio "$pg_signed" "$bare_signed")x"
printf '  %-50s %9s %9s\n' "the same, the HMAC set aside (target <= 2)" "-" \
  "$(ratio "$pg_signed_net" "$bare_signed")x"
if [ -n "${ngx_plain:-}" ]; then
  printf '  %-50s %9s %9s\n' "persona-guard / nginx" \
    "$(ratio "$pg_plain" "$ngx_plain")x" "$(ratio "$pg_signed" "$ngx_signed")x"
  printf '  %-50s %9s %9s\n' "bare pingora / nginx" \
    "$(ratio "$bare_plain" "$ngx_plain")x" "$(ratio "$bare_signed" "$ngx_signed")x"
fi
