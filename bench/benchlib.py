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


LUA_DIR = os.path.join(ROOT, "bench/nginx_lua")
LUA_PACKAGES = ("libnginx-mod-http-lua", "lua-resty-core", "lua-luaossl", "lua-cjson")
NGINX_MODULES = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")


def lua_main():
    """(the `load_module` and `env` lines of the nginx + Lua peer, what is
    missing or ""): the Lua module from Debian's libnginx-mod-http-lua (with
    its NDK), and the Lua libraries it requires, tried with `nginx -t`."""
    mods = ("ndk_http_module.so", "ngx_http_lua_module.so")
    where = next((d for d in NGINX_MODULES
                  if all(os.path.exists(os.path.join(d, m)) for m in mods)), None)
    if not where:
        return "", "nginx's Lua module (" + ", ".join(mods) + ")"
    main = "".join(f"load_module {where}/{m};\n" for m in mods) + "env PERSONA_WEBHOOK_SECRET;\n"
    work = tempfile.mkdtemp(prefix="pg-lua-check.")
    try:
        conf = os.path.join(work, "t.conf")
        with open(conf, "w") as f:
            f.write(f"""{main}pid {work}/t.pid; error_log stderr warn;
events {{}}
http {{ lua_package_path "{LUA_DIR}/?.lua;;";
  init_by_lua_block {{ require "resty.core"; require "openssl.hmac"; require "cjson.safe"; require "persona_verify" }} }}
""")
        t = subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-c", conf, "-p", work],
                           capture_output=True, text=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if t.returncode != 0:
        return main, "Lua libraries nginx could not load:\n" + t.stderr.strip()
    return main, ""


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

    def nginx(self, name, port, body, main="", env=None):
        """nginx with one worker on CPU 1; `body` goes in its `http` block,
        `main` (load_module, env) before it."""
        conf = self.path(f"{name}.conf")
        with open(conf, "w") as f:
            f.write(f"""{main}
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
        p = self.start(["nginx", "-c", conf, "-p", self.work], 1, env=env)
        wait_port(port)
        return p

    def nginx_lua(self, name, port, up):
        """The nginx + Lua verifier (bench/nginx_lua/persona_verify.lua) on
        `port`: `/webhooks/persona` verified, then proxy_pass with keep-alive
        to 127.0.0.1:`up` (`/webhooks/persona-fail` to the upstream's `/fail`,
        for the correctness check); everything else proxied as is."""
        main, missing = lua_main()
        if missing:
            sys.exit(f"bench: the nginx + Lua peer needs {missing}\n"
                     f"  apt-get install -y {' '.join(LUA_PACKAGES)}   (or BENCH_NGINX_LUA=0 to skip it)")
        hooks = """
      access_by_lua_block        { require("persona_verify").access() }
      header_filter_by_lua_block { require("persona_verify").header_filter() }
      log_by_lua_block           { require("persona_verify").log() }"""
        proxy = 'proxy_http_version 1.1; proxy_set_header Connection "";'
        body = f"""
  lua_package_path "{LUA_DIR}/?.lua;;";
  lua_shared_dict persona_replay 128m;
  init_by_lua_block {{ require("persona_verify").init(os.getenv("PERSONA_WEBHOOK_SECRET")) }}
  upstream app {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location = /webhooks/persona {{ {hooks}
      proxy_pass http://app; {proxy} }}
    location = /webhooks/persona-fail {{ {hooks}
      proxy_pass http://app/fail; {proxy} }}
    location / {{ proxy_pass http://app; {proxy} }} }}"""
        return self.nginx(name, port, body, main=main,
                          env=dict(os.environ, PERSONA_WEBHOOK_SECRET=SECRET))

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
