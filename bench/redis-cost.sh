#!/usr/bin/env bash
# What the Redis replay store costs per delivery, against the memory store, in
# one run: the same signed load (new event id per request, ~4 KiB) through the
# real release binary with each store, in front of the built-in echo upstream.
# Loopback only, bounded in time. Pins the load generator to CPU 0 and the proxy,
# upstream and Redis to CPU 1.
#
#   bench/redis-cost.sh [seconds per run, default 10] [connections, default 16]
source "$(dirname "$0")/lib.sh"
SECS=${1:-10}
CONNS=${2:-16}
command -v redis-server >/dev/null || { echo "bench: install redis-server" >&2; exit 1; }
build

export PERSONA_WEBHOOK_SECRET=wbhsec_bench_secret
UP=$(free_port); REDIS=$(free_port)
taskset -c 1 "$BIN" echo --listen "127.0.0.1:$UP" >/dev/null 2>&1 & PIDS+=($!)
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
wait_port "$UP"; wait_port "$REDIS"

run() { # name, replay toml
  local name=$1 replay=$2 listen admin cfg pid before after out
  listen=$(free_port); admin=$(free_port); cfg=$WORK/$name.toml
  cat >"$cfg" <<TOML
[listen]
address = "127.0.0.1:$listen"
[admin]
address = "127.0.0.1:$admin"
[server]
threads = 1
[upstream]
address = "127.0.0.1:$UP"
[replay]
$replay
[[route]]
path = "/webhooks/persona"
secrets = ["env:PERSONA_WEBHOOK_SECRET"]
TOML
  RUST_LOG=warn taskset -c 1 "$BIN" run --config "$cfg" 2>"$WORK/$name.log" & pid=$!
  wait_port "$listen"
  # Warm up connections and pools, then measure.
  taskset -c 0 "$LOADGEN" --target "127.0.0.1:$listen" --connections "$CONNS" --duration 2s >/dev/null
  before=$(cpu_seconds "$pid")
  out=$(taskset -c 0 "$LOADGEN" --target "127.0.0.1:$listen" --connections "$CONNS" --duration "${SECS}s")
  after=$(cpu_seconds "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs rps p50 p99 ok
  reqs=$(json_field "$out" requests); rps=$(json_field "$out" rps); ok=$(json_field "$out" ok)
  p50=$(json_field "$out" p50_us); p99=$(json_field "$out" p99_us)
  local cpu_us
  cpu_us=$(python3 -c "print(round(($after-$before)*1e6/max($reqs,1),1))")
  printf '%-8s %9s %9.0f %9s %9s %14s\n' "$name" "$ok/$reqs" "$rps" "$p50" "$p99" "$cpu_us"
  echo "$name $rps $p50 $p99 $cpu_us" >>"$WORK/rows"
}

echo "signed deliveries, ${CONNS} connections, closed loop, ${SECS}s per store; proxy on 1 thread"
printf '%-8s %9s %9s %9s %9s %14s\n' store "2xx/req" req/s p50_us p99_us proxy_cpu_us/req
run memory 'store = "memory"'
run redis "store = \"redis\"
redis_url = \"redis://127.0.0.1:$REDIS/0\""
python3 - "$WORK/rows" <<'PY'
import sys
rows = {l.split()[0]: list(map(float, l.split()[1:])) for l in open(sys.argv[1])}
m, r = rows["memory"], rows["redis"]
print(f"redis / memory: throughput {r[0]/m[0]:.2f}x, p50 {r[1]/m[1]:.2f}x, p99 {r[2]/m[2]:.2f}x, "
      f"proxy CPU per delivery {r[3]/m[3]:.2f}x (+{r[3]-m[3]:.1f} us)")
PY
