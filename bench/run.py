#!/usr/bin/env python3
"""The load benchmark: persona-guard's real release binary against nginx and a
bare pingora proxy in the same run, on 127.0.0.1 only, bounded in time. See
bench/README.md.

Rows (every one driven by examples/loadgen.rs, ~4 KiB bodies):
  direct        the upstream (nginx answering 200) hit directly: the limit
  nginx         nginx proxy_pass with upstream keep-alive: the yardstick
  bare-pass     examples/bare_proxy.rs (pingora's few-line proxy, no checks),
                the same plain POSTs: the floor of pingora itself
  pg-pass       persona-guard, passthrough path
  nginx-signed  nginx proxy_pass of signed deliveries (it does not verify)
  nginx-lua-signed  nginx + Lua (bench/nginx_lua/persona_verify.lua): the same
                deliveries verified like persona-guard does (signature, 300 s
                tolerance, data.id replay in an ngx.shared dict), then
                proxy_pass; checked to verify before it is measured
                (skip with BENCH_NGINX_LUA=0)
  bare-signed   the bare pingora proxy forwarding the same signed bodies
  pg-signed     persona-guard, signed deliveries verified and forwarded
  pg-spool-onfail  persona-guard, the same, on a route with spool = "on_failure"
                (a healthy app: the cost of the spool armed but unused)
  pg-spool-always  persona-guard, spool = "always": each delivery written to
                the spool dir (fsync, rename, dir fsync), answered 202, then
                redelivered by the spool worker (its CPU is in the row's: the
                closed loop's CPU is read once the spool has drained)
                (skip both with BENCH_SPOOL=0)
Modes: closed loop with 64 connections (throughput), then fixed 500 and 5000 req/s
(latency, measured from the scheduled send time).
CPU per request is the proxy processes' user+system time from /proc divided by
the requests served: the median of BENCH_ROUNDS (default 5) interleaved rounds
of BENCH_ROUND_SECONDS (default 3) s closed loop per peer (every peer's round 1,
then every peer's round 2, ...), and once more at the fixed 5000 req/s (the
`cpu@5k` column: every peer doing the same work per second). The load
generator is pinned to CPU 0, proxies and upstream to CPU 1.

  BENCH_SECONDS=4 python3 bench/run.py   (closed-loop seconds per row, default 8;
                                          each row also takes 2 s of warm-up and
                                          2 x max(BENCH_SECONDS/2, 3) s at fixed rates)
"""
import hashlib
import hmac
import http.client
import json
import os
import shutil
import subprocess
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BARE, BIN, CONNS, LOADGEN, SECRET, Bench, free_port,  # noqa: E402
                      spool_metrics as metrics, wait_port)

SECS = int(os.environ.get("BENCH_SECONDS", "8"))
SPOOL = os.environ.get("BENCH_SPOOL", "1") != "0"
LUA = os.environ.get("BENCH_NGINX_LUA", "1") != "0"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ROUND_SECS = int(os.environ.get("BENCH_ROUND_SECONDS", "3"))
TCK = os.sysconf("SC_CLK_TCK")
B = Bench("pg-bench.")
WORK = B.work
start, nginx, persona_guard = B.start, B.nginx, B.persona_guard


def family(pid):
    """pid and its children (nginx master + workers)."""
    out = [pid]
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
        out += [int(k) for k in kids]
    except OSError:
        pass
    return out


def cpu_seconds(pid):
    total = 0.0
    for p in family(pid):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / TCK
        except OSError:
            pass
    return total


def peak_rss_kib(pid):
    total = 0
    for p in family(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def loadgen(port, mode, path, rate=0, secs=SECS, conns=CONNS):
    args = [LOADGEN, "--target", f"127.0.0.1:{port}", "--mode", mode, "--path", path,
            "--connections", str(conns), "--duration", f"{secs}s", "--rate", str(rate)]
    out = subprocess.run(["taskset", "-c", "0"] + args, capture_output=True, text=True,
                         env=dict(os.environ, PERSONA_WEBHOOK_SECRET=SECRET), check=True)
    return json.loads(out.stdout)


def drained(admin, timeout=int(os.environ.get("BENCH_SPOOL_DRAIN", "60"))):
    """Waits until the spool is empty; returns (depth seen first, seconds waited)."""
    t0 = time.monotonic()
    first = metrics(admin).get("persona_guard_spool_depth", 0)
    depth = first
    while depth > 0 and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
        depth = metrics(admin).get("persona_guard_spool_depth", 0)
    if depth > 0:
        print(f"bench: the spool still holds {depth:.0f} entries after {timeout} s", file=sys.stderr)
    return first, time.monotonic() - t0


def post(port, path, body, t=None, sig=None):
    """One POST on a new connection: (status, body)."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json"}
    if sig != "":  # "": no header at all
        headers["Persona-Signature"] = sig if sig is not None else f"t={t},v1={mac}"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def check_verifier(port):
    """The nginx + Lua peer must verify, not just forward: exits unless every
    case gets persona-guard's answer."""
    run = f"{os.getpid()}_{time.time_ns()}"

    def event(n):
        return json.dumps({"data": {"type": "event", "id": f"evt_check_{run}_{n}",
                                    "attributes": {"name": "inquiry.approved"}}}).encode()
    good, now = event(1), int(time.time())
    mac = hmac.new(SECRET.encode(), f"{now}.".encode() + good, hashlib.sha256).hexdigest()
    other = "0" * 64
    cases = [
        ("good delivery (the upstream's 200)", post(port, "/webhooks/persona", good), 200, "ok"),
        ("the same again", post(port, "/webhooks/persona", good), 200, '{"status":"duplicate"}'),
        ("tampered body", post(port, "/webhooks/persona", good[:-1] + b" }",
                               sig=f"t={now},v1={mac}"), 401, "invalid_signature"),
        ("stale timestamp (301 s)", post(port, "/webhooks/persona", event(2), t=now - 301),
         401, "timestamp_out_of_tolerance"),
        ("future timestamp (301 s)", post(port, "/webhooks/persona", event(2), t=now + 301),
         401, "timestamp_out_of_tolerance"),
        ("no signature", post(port, "/webhooks/persona", event(2), sig=""), 401, "missing_signature"),
        ("two sets, the second genuine", post(
            port, "/webhooks/persona", event(3),
            sig=f"t={now},v1={other} t={now},v1="
                + hmac.new(SECRET.encode(), f"{now}.".encode() + event(3),
                           hashlib.sha256).hexdigest().upper()), 200, "ok"),
        ("no data.id", post(port, "/webhooks/persona", b'{"data":{"attributes":{"name":"x"}}}'),
         400, "invalid_event"),
        ("app answers 503", post(port, "/webhooks/persona-fail", event(4)), 503, "down"),
        ("the same again: released, not duplicate", post(port, "/webhooks/persona-fail", event(4)),
         503, "down"),
    ]
    bad = [f"{what}: got {st} {body!r}, want {want} {text!r}"
           for what, (st, body), want, text in cases if st != want or text not in body]
    if bad:
        sys.exit("bench: the nginx + Lua peer does not verify like persona-guard:\n  "
                 + "\n  ".join(bad))
    print(f"nginx + Lua peer check passed: {len(cases)} cases (good 200, duplicate, tampered 401,"
          f" stale 401, released on non-2xx, ...)", flush=True)


def measure(name, port, pid, mode, path, admin=None):
    loadgen(port, mode, path, secs=2)  # warm up pools and caches
    if admin:
        drained(admin)
    before = cpu_seconds(pid) if pid else 0
    closed = loadgen(port, mode, path)
    backlog = drain_s = None
    if admin:  # "always": the worker's redelivery of this run is part of its cost
        backlog, drain_s = drained(admin)
    after = cpu_seconds(pid) if pid else 0
    row = {
        "name": name,
        "rps": closed["rps"],
        "p50": closed["p50_us"],
        "p99": closed["p99_us"],
        "ok": closed["ok"],
        "requests": closed["requests"],
        "cpu_us": (after - before) * 1e6 / max(closed["requests"], 1) if pid else None,
        "rss_kib": peak_rss_kib(pid) if pid else None,
        "mode": mode,
        "load": (port, pid, mode, path),
        "backlog": backlog,
        "drain_s": drain_s,
    }
    for rate in (500, 5000):
        before = cpu_seconds(pid) if pid else 0
        r = loadgen(port, mode, path, rate=rate, secs=max(SECS // 2, 3))
        if pid and not admin:
            row[f"cpu@{rate}"] = (cpu_seconds(pid) - before) * 1e6 / max(r["requests"], 1)
        row[f"p99@{rate}"] = r["p99_us"]
        row[f"rps@{rate}"] = r["rps"]
        row["ok"] += r["ok"]
        row["requests"] += r["requests"]
        if admin:
            row[f"backlog@{rate}"], row[f"drain_s@{rate}"] = drained(admin)
    if admin:
        row["spool"] = metrics(admin)
    return row


def rounds(rows):
    """CPU per request again, in ROUNDS interleaved rounds of ROUND_SECS
    closed-loop seconds per peer (peer A, B, C, then A, B, C again...), so a
    neighbour's burst on this shared machine lands on every peer alike; each
    row with a process (`direct` has none) gets as `cpu_us` the median of its
    rounds (their spread is kept)."""
    peers = [r for r in rows if r["load"][1]]
    seen = {r["name"]: [] for r in peers}
    for _ in range(ROUNDS):
        for r in peers:
            port, pid, mode, path = r["load"]
            before = cpu_seconds(pid)
            got = loadgen(port, mode, path, secs=ROUND_SECS)
            seen[r["name"]].append((cpu_seconds(pid) - before) * 1e6 / max(got["requests"], 1))
    for r in peers:
        r["cpu_rounds"] = sorted(seen[r["name"]])
        r["cpu_us"] = statistics.median(seen[r["name"]])


def main():
    if not shutil.which("nginx"):
        sys.exit("bench: nginx is missing (apt-get install nginx-light)")
    for exe in (BIN, LOADGEN, BARE):
        if not os.path.exists(exe):
            sys.exit(f"bench: {exe} is missing (cargo build --release --bin persona-guard"
                     " --example loadgen --example bare_proxy)")
    up, ngx, bare = free_port(), free_port(), free_port()
    nginx("upstream", up, f"server {{ listen 127.0.0.1:{up}; location / {{ return 200 'ok'; }}"
                          f" location = /fail {{ return 503 'down'; }} }}")
    proxy_block = f"""
  upstream app {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""
    nx = nginx("nginx", ngx, proxy_block.replace("{port}", str(ngx)))
    if LUA:
        lua = free_port()
        nxl = B.nginx_lua("nginx-lua", lua, up)
        check_verifier(lua)
    pgp, pg, _ = persona_guard("pg", up)
    idle_rss = peak_rss_kib(pgp.pid)
    bp = start([BARE, f"127.0.0.1:{bare}", f"127.0.0.1:{up}"], 1)
    wait_port(bare)

    rows = [
        measure("direct", up, None, "plain", "/x"),
        measure("nginx", ngx, nx.pid, "plain", "/x"),
        measure("bare-pass", bare, bp.pid, "plain", "/x"),
        measure("pg-pass", pg, pgp.pid, "plain", "/x"),
        measure("nginx-signed", ngx, nx.pid, "signed", "/webhooks/persona"),
    ] + ([measure("nginx-lua-signed", lua, nxl.pid, "signed", "/webhooks/persona")] if LUA else []) + [
        measure("bare-signed", bare, bp.pid, "signed", "/webhooks/persona"),
        measure("pg-signed", pg, pgp.pid, "signed", "/webhooks/persona"),
    ]
    if ROUNDS:
        rounds(rows)
    if SPOOL:
        for name, mode in (("pg-spool-onfail", "on_failure"), ("pg-spool-always", "always")):
            spool_dir = os.path.join(WORK, f"{name}.spool")  # fresh, created by persona-guard
            proc, port, admin = persona_guard(
                name, up, route_extra=f'spool = "{mode}"', extra=f'[spool]\ndir = "{spool_dir}"')
            rows.append(measure(name, port, proc.pid, "signed", "/webhooks/persona", admin=admin))
            proc.terminate()
            proc.wait(timeout=15)
    by = {r["name"]: r for r in rows}
    print(f"persona-guard bench: {SECS}s closed loop x {CONNS} connections, then 500 and 5000 req/s;"
          f" ~4 KiB bodies; loadgen on CPU 0, proxy + upstream on CPU 1; nginx 1 worker,"
          f" persona-guard and the bare pingora proxy 1 thread; CPU per request the median of"
          f" {ROUNDS} interleaved rounds of {ROUND_SECS} s closed loop")
    print(f"{'row':<17}{'req/s':>9}{'p50 us':>9}{'p99 us':>9}{'p99@500':>9}{'p99@5k':>9}{'rps@5k':>8}"
          f"{'cpu us/req':>11}{'(rounds)':>14}{'cpu@5k':>8}{'peak RSS':>10}{'x direct':>9}{'x nginx':>8}"
          f"{'x bare':>7}")
    for r in rows:
        signed = r["mode"] == "signed"
        base = by["nginx-signed"] if signed else by["nginx"]
        floor = by["bare-signed"] if signed else by["bare-pass"]
        cpu = f"{r['cpu_us']:.1f}" if r["cpu_us"] is not None else "-"
        spread = (f"{r['cpu_rounds'][0]:.0f}-{r['cpu_rounds'][-1]:.0f}" if r.get("cpu_rounds") else "-")
        at5k = f"{r['cpu@5000']:.1f}" if r.get("cpu@5000") else "-"
        rss = f"{r['rss_kib'] / 1024:.1f}M" if r["rss_kib"] else "-"
        print(f"{r['name']:<17}{r['rps']:>9.0f}{r['p50']:>9}{r['p99']:>9}{r['p99@500']:>9}{r['p99@5000']:>9}"
              f"{r['rps@5000']:>8.0f}{cpu:>11}{spread:>14}{at5k:>8}{rss:>10}"
              f"{r['rps'] / by['direct']['rps']:>9.2f}{r['rps'] / base['rps']:>8.2f}"
              f"{r['rps'] / floor['rps']:>7.2f}")
    print("(x direct, x nginx, x bare: req/s against the row's counterpart of the same mode;"
          " cpu@5k: CPU per request at the fixed 5000 req/s)")
    s, n, p, npl = by["pg-signed"], by["nginx-signed"], by["pg-pass"], by["nginx"]
    bs, bpl = by["bare-signed"], by["bare-pass"]
    print("persona-guard / bare pingora proxy (ratios of this run):")
    print(f"  passthrough CPU/req: {p['cpu_us'] / bpl['cpu_us']:.2f}x (target <= 1.0);"
          f" req/s {p['rps'] / bpl['rps']:.2f}x")
    print(f"  verified delivery CPU/req vs forwarding the same body: {s['cpu_us'] / bs['cpu_us']:.2f}x"
          f" (target <= 1.1); at 5000 req/s {s['cpu@5000'] / bs['cpu@5000']:.2f}x;"
          f" req/s {s['rps'] / bs['rps']:.2f}x")
    print(f"  p99 at 5000 req/s, verified vs forwarding the same body:"
          f" {s['p99@5000'] / bs['p99@5000']:.2f}x (target <= 1.2)")
    print(f"  bare pingora / nginx CPU/req: plain {bpl['cpu_us'] / npl['cpu_us']:.2f}x,"
          f" signed body {bs['cpu_us'] / n['cpu_us']:.2f}x")
    print("against nginx (ratios of this run):")
    print(f"  signed CPU/req vs nginx proxy_pass of the same body: {s['cpu_us'] / n['cpu_us']:.2f}x")
    print(f"  signed throughput vs nginx plain: {s['rps'] / npl['rps']:.2f}x")
    print(f"  passthrough CPU/req vs nginx: {p['cpu_us'] / npl['cpu_us']:.2f}x")
    print(f"  p99 at 5000 req/s, signed vs nginx: {s['p99@5000'] / n['p99@5000']:.2f}x")
    print(f"  idle RSS: {idle_rss / 1024:.1f} MiB (target <= 16)")
    if LUA:
        lu = by["nginx-lua-signed"]
        print("nginx + Lua verifier, the same checks (ratios of this run):")
        print(f"  persona-guard verified / nginx+Lua verified: CPU/req {s['cpu_us'] / lu['cpu_us']:.2f}x"
              f" ({s['cpu_us']:.1f} against {lu['cpu_us']:.1f} us; target <= 1.0); at 5000 req/s"
              f" {s['cpu@5000'] / lu['cpu@5000']:.2f}x; req/s {s['rps'] / lu['rps']:.2f}x;"
              f" p99@5000 {s['p99@5000'] / lu['p99@5000']:.2f}x")
        print(f"  nginx+Lua verified / bare pingora forwarding the same body: CPU/req"
              f" {lu['cpu_us'] / bs['cpu_us']:.2f}x; req/s {lu['rps'] / bs['rps']:.2f}x")
        print(f"  nginx+Lua verified / nginx proxy_pass of the same body: CPU/req"
              f" {lu['cpu_us'] / n['cpu_us']:.2f}x; req/s {lu['rps'] / n['rps']:.2f}x")
    if SPOOL:
        print("delivery spool, against pg-signed (spool off) in this run:")
        for name in ("pg-spool-onfail", "pg-spool-always"):
            r = by[name]
            print(f"  {name}: CPU/delivery {r['cpu_us'] / s['cpu_us']:.2f}x ({r['cpu_us']:.1f} against"
                  f" {s['cpu_us']:.1f} us); req/s {r['rps'] / s['rps']:.2f}x; p99@500"
                  f" {r['p99@500'] / s['p99@500']:.2f}x; p99@5000 {r['p99@5000'] / s['p99@5000']:.2f}x")
        for name in ("pg-spool-onfail", "pg-spool-always"):
            r, m = by[name], by[name]["spool"]
            red = ", ".join(f"{k.split('{')[1][:-1]} {v:.0f}" for k, v in sorted(m.items())
                            if k.startswith("persona_guard_spool_redeliveries_total{") and v)
            fb = ", ".join(f"{k.split('{')[1][:-1]} {v:.0f}" for k, v in sorted(m.items())
                           if k.startswith("persona_guard_spool_fallbacks_total{") and v)
            print(f"  {name} spool at the end: depth {m.get('persona_guard_spool_depth', 0):.0f},"
                  f" dead letters {m.get('persona_guard_spool_dead_letters', 0):.0f},"
                  f" fallbacks {m.get('persona_guard_spool_fallbacks_total', 0):.0f}"
                  f"{' (' + fb + ')' if fb else ''}; redeliveries: {red or 'none'}")
            print(f"    backlog left when the load stopped: closed loop {r['backlog']:.0f}"
                  f" (drained in {r['drain_s']:.1f} s), 500/s {r['backlog@500']:.0f}"
                  f" ({r['drain_s@500']:.1f} s), 5000/s {r['backlog@5000']:.0f} ({r['drain_s@5000']:.1f} s)")
    bad = [r["name"] for r in rows if r["ok"] != r["requests"]]
    if bad:
        print(f"  non-2xx answers in: {bad}")


with B:
    main()
