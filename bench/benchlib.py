"""What bench/run.py and bench/drain.py share: the binaries, free loopback
ports, processes pinned to a CPU and stopped at the end, an nginx of one
worker, and the spool series read off persona-guard's /metrics.

    with Bench("pg-bench.") as b:      # a temp dir; every process started
        b.start([...], cpu=1)          # through it is stopped on exit
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/persona-guard")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")
BARE = os.path.join(ROOT, "target/release/examples/bare_proxy")
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
SECRET = "wbhsec_bench_secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: nothing listens on {port}")


def stop(p):
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def spool_metrics(admin):
    """Sums of the persona_guard_spool_* series on the admin /metrics, by name
    (and name{result} for the redeliveries, name{reason} for fallbacks)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("persona_guard_spool_"):
            continue
        key, value = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        out[name] = out.get(name, 0) + float(value)
        for label in ("result", "reason"):
            if f'{label}="' in key:
                v = key.split(f'{label}="', 1)[1].split('"', 1)[0]
                out[f"{name}{{{v}}}"] = out.get(f"{name}{{{v}}}", 0) + float(value)
    return out


class Bench:
    """A run's temp dir and the processes it started (stopped on exit)."""

    def __init__(self, prefix):
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            stop(p)
        shutil.rmtree(self.work, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.work, name)

    def start(self, args, cpu, **kw):
        """`args` pinned to `cpu`, its stdout dropped (stderr too, unless given)."""
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + args, stdout=subprocess.DEVNULL,
                             stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
        self.procs.append(p)
        return p

    def nginx(self, name, port, body):
        """nginx with one worker on CPU 1; `body` goes in its `http` block."""
        conf = self.path(f"{name}.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
daemon off;
pid {self.work}/{name}.pid;
error_log {self.work}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_buffer_size 2m;
  client_max_body_size 2m;
  keepalive_requests 1000000;
  {body}
}}
""")
        p = self.start(["nginx", "-c", conf, "-p", self.work], 1)
        wait_port(port)
        return p

    def persona_guard(self, name, up, route_extra="", extra=""):
        """persona-guard (1 thread, on CPU 1) in front of 127.0.0.1:`up`, one
        route `/webhooks/persona` (plus `route_extra`), `extra` after the
        `[upstream]` table: (process, listen port, admin port)."""
        port, admin = free_port(), free_port()
        cfg = self.path(f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[listen]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[server]
threads = 1
[upstream]
address = "127.0.0.1:{up}"
{extra}
[[route]]
path = "/webhooks/persona"
secrets = ["env:PERSONA_WEBHOOK_SECRET"]
{route_extra}
""")
        p = self.start([BIN, "run", "--config", cfg], 1,
                       env=dict(os.environ, PERSONA_WEBHOOK_SECRET=SECRET, RUST_LOG="warn"),
                       stderr=open(self.path(f"{name}.log"), "w"))
        wait_port(port)
        return p, port, admin
