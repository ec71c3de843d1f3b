#!/usr/bin/env python3
"""The spool's drain benchmark: how fast persona-guard keeps deliveries while
the app is down, and how fast it hands the backlog over once the app is back.
Loopback only, bounded in time, cleans up after itself. See bench/README.md.

For each spool (the embedded one under a fresh temp dir, then the Redis stream
with `replay.store = "redis"` on a redis-server this script starts on a free
port with no persistence):
  1. persona-guard (1 thread) with a route `spool = "on_failure"` whose
     upstream port has nothing listening (a refused connect: immediate);
  2. examples/loadgen.rs sends BENCH_DRAIN_EVENTS (10000) signed ~4 KiB
     deliveries over 64 connections: each is refused upstream, spooled and
     answered 202 (the spooling rate);
  3. nginx (1 worker, answering 200) starts on the upstream port; /metrics is
     scraped every 50 ms until `persona_guard_spool_depth` is 0 and
     `persona_guard_spool_redeliveries_total{result="delivered"}` has counted
     every event (the drain rate, the time to empty).
The load generator runs on CPU 0; persona-guard, nginx and redis-server on CPU 1.

  python3 bench/drain.py     (expects the release binaries: bench/run.sh builds them)
"""
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, CONNS, LOADGEN, SECRET, Bench, free_port, stop,  # noqa: E402
                      spool_metrics as metrics, wait_port)

EVENTS = int(os.environ.get("BENCH_DRAIN_EVENTS", "10000"))
TIMEOUT = int(os.environ.get("BENCH_DRAIN_TIMEOUT", "300"))  # seconds, per phase
B = Bench("pg-drain.")
WORK = B.work
start = B.start


def nginx(name, port):
    """The app back up: nginx answering 200 to everything."""
    return B.nginx(name, port, f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }}")


def run(name, store_toml):
    up = free_port()
    pg, port, admin = B.persona_guard(name, up, 'spool = "on_failure"',
                                      f'connect_timeout = "100ms"\n{store_toml}')
    # 1. The app is down: every delivery is refused upstream, spooled, answered 202.
    out = subprocess.run(
        ["taskset", "-c", "0", LOADGEN, "--target", f"127.0.0.1:{port}", "--mode", "signed",
         "--path", "/webhooks/persona", "--connections", str(CONNS), "--duration", f"{TIMEOUT}s",
         "--max-requests", str(EVENTS)],
        capture_output=True, text=True, env=dict(os.environ, PERSONA_WEBHOOK_SECRET=SECRET),
        check=True, timeout=TIMEOUT + 30)
    sent = json.loads(out.stdout)
    print(f"drain: {name}: spooled {sent}", file=sys.stderr)
    before = metrics(admin)
    depth0 = before.get("persona_guard_spool_depth", 0)
    # 2. The app is back.
    ngx = nginx(f"{name}-app", up)
    t0 = time.monotonic()
    first = None
    m = before
    while time.monotonic() - t0 < TIMEOUT:
        m = metrics(admin)
        delivered = m.get('persona_guard_spool_redeliveries_total{delivered}', 0)
        if first is None and delivered > 0:
            first = time.monotonic() - t0
        if m.get("persona_guard_spool_depth", 0) == 0 and delivered >= sent["ok"]:
            break
        time.sleep(0.05)
    else:
        print(f"drain: {name}: timed out: {m}", file=sys.stderr)
    empty = time.monotonic() - t0
    stop(pg)
    stop(ngx)
    delivered = m.get('persona_guard_spool_redeliveries_total{delivered}', 0)
    return {
        "name": name,
        "sent": sent,
        "depth0": depth0,
        "depth": m.get("persona_guard_spool_depth", 0),
        "fallbacks": m.get("persona_guard_spool_fallbacks_total", 0),
        "failed": m.get('persona_guard_spool_redeliveries_total{failed}', 0),
        "failed_before": before.get('persona_guard_spool_redeliveries_total{failed}', 0),
        "delivered": delivered,
        "duplicate": m.get('persona_guard_spool_redeliveries_total{duplicate}', 0),
        "deferred": m.get('persona_guard_spool_redeliveries_total{deferred}', 0),
        "first": first,
        "empty": empty,
        "done": m.get("persona_guard_spool_depth", 0) == 0,
    }


def main():
    if not shutil.which("nginx"):
        sys.exit("drain: nginx is missing (apt-get install nginx-light)")
    for exe in (BIN, LOADGEN):
        if not os.path.exists(exe):
            sys.exit(f"drain: {exe} is missing (cargo build --release --bin persona-guard"
                     " --example loadgen)")
    rows = [run("embedded", f'[spool]\ndir = "{os.path.join(WORK, "spool")}"')]
    if shutil.which("redis-server"):
        rport = free_port()
        redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no"], 1)
        wait_port(rport)
        rows.append(run("redis", f'[replay]\nstore = "redis"\nredis_url = "redis://127.0.0.1:{rport}/0"'))
        stop(redis)
    else:
        print("drain: redis-server is missing; the Redis spool is skipped", file=sys.stderr)
    print(f"spool drain: {EVENTS} signed ~4 KiB deliveries over {CONNS} connections to a route with"
          f" spool = \"on_failure\" while the app is down (connect refused), then nginx answering 200"
          f" starts; persona-guard 1 thread + its spool worker, nginx and redis-server on CPU 1,"
          f" loadgen on CPU 0; max_backoff 60 s (default)")
    print(f"{'spool':<10}{'202/sent':>13}{'spooling/s':>11}{'depth':>7}{'fallbk':>7}{'1st deliv s':>12}"
          f"{'empty s':>9}{'drain ev/s':>11}{'left':>6}{'delivered':>10}{'failed':>8}{'dup':>5}{'defer':>6}")
    for r in rows:
        s = r["sent"]
        rate = r["delivered"] / r["empty"] if r["empty"] else 0
        first = f"{r['first']:.2f}" if r["first"] is not None else "-"
        empty = f"{r['empty']:.2f}" if r["done"] else f">{r['empty']:.0f}"
        print(f"{r['name']:<10}{str(s['ok']) + '/' + str(s['requests']):>13}{s['ok'] / s['seconds']:>11.0f}"
              f"{r['depth0']:>7.0f}{r['fallbacks']:>7.0f}{first:>12}{empty:>9}{rate:>11.0f}{r['depth']:>6.0f}"
              f"{r['delivered']:>10.0f}{r['failed']:>8.0f}{r['duplicate']:>5.0f}{r['deferred']:>6.0f}")
    print("(202/sent: deliveries answered 2xx by persona-guard / answered at all; depth: the spool when"
          " the app came back; 1st deliv, empty: seconds from the app's start to the first delivered"
          " redelivery and to depth 0 (>T: not empty when the wait ended); drain ev/s: delivered / that time;"
          " left: depth then; failed: redeliveries refused"
          " while the app was down, counted over the whole run)")
    for r in rows:
        if not r["done"]:
            print(f"  {r['name']}: NOT drained within {TIMEOUT} s: depth {r['depth']:.0f}")
        if r["sent"]["non_2xx"] or r["sent"]["errors"]:
            print(f"  {r['name']}: {r['sent']['non_2xx']} non-2xx answers, {r['sent']['errors']}"
                  " connection errors while spooling")
    if len(rows) == 2:
        e, rd = rows
        print(f"redis / embedded: spooling rate {rd['sent']['ok'] / rd['sent']['seconds'] / (e['sent']['ok'] / e['sent']['seconds']):.2f}x,"
              f" drain rate {(rd['delivered'] / rd['empty']) / (e['delivered'] / e['empty']):.2f}x")


with B:
    main()
