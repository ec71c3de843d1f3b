#!/usr/bin/env python3
"""Offline checks of the Kubernetes examples (no cluster, no schema download):
every document parses and has the fields a Deployment/Service/ConfigMap needs,
the Service targets the sidecar's port, probes hit the admin port, the app
listens on localhost only, and every embedded route file passes
`persona-guard check` with its secrets laid out as the volumes mount them.
A Redis run by an example must keep the replay memory across a restart
(`--appendonly yes`, `--appendfsync everysec` or `always`, no eviction policy)
and be the Service that `redis_url` names. A NetworkPolicy selects the
persona-guard pod: the http port open, the admin port (whose state-changing
calls answer loopback or the `[admin] token` only) reachable only from a
selected namespace; the kubelet's probes are not subject to it.

    python3 deploy/kubernetes/validate.py target/debug/persona-guard
"""
import pathlib
import subprocess
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/persona-guard"
failures = []


def fail(where, what):
    failures.append(f"{where}: {what}")


def check_redis(where, docs, route_file):
    """A redis-server in the example keeps its data (docs/replay.md: What Redis must keep)."""
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    for d in docs:
        if d["kind"] not in ("StatefulSet", "Deployment"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            argv = [str(a) for a in c.get("command", []) + c.get("args", [])]
            if "redis-server" not in argv:
                continue
            opts = dict(zip(argv, argv[1:]))
            who = f"{where}: {d['kind']} {d['metadata']['name']}"
            if opts.get("--appendonly") != "yes":
                fail(who, "redis-server without --appendonly yes forgets every mark on restart")
            if opts.get("--appendfsync") not in ("everysec", "always"):
                fail(who, "redis-server needs --appendfsync everysec (or always)")
            if opts.get("--maxmemory-policy", "noeviction") != "noeviction":
                fail(who, "an eviction policy drops replay marks: use noeviction")
            if not any(m.get("mountPath") == opts.get("--dir", "/data") for m in c.get("volumeMounts", [])):
                fail(who, "the AOF directory is not on a volume")
            if d["kind"] == "StatefulSet" and not d["spec"].get("volumeClaimTemplates"):
                fail(who, "no volumeClaimTemplates: the AOF would not survive the pod")
            url = [l for l in route_file.splitlines() if l.strip().startswith("redis_url")]
            host = url[0].split("//", 1)[1].split("@")[-1].split(":")[0].split("/")[0] if url else ""
            if host.split(".")[0] not in services:
                fail(who, f"redis_url host {host!r} is not a Service of this example")


def admits(rule, port_names):
    """Whether an ingress rule's ports admit one of `port_names` (no ports: all)."""
    ports = rule.get("ports") or []
    return not ports or any(p.get("port") in port_names for p in ports)


def check_network_policy(where, docs, labels, ports):
    """The pod's admin port is reachable only from selected namespaces; its http port from anywhere."""
    policies = [
        d for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["spec"].get("podSelector", {}).get("matchLabels")
        and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    if not policies:
        fail(where, "no NetworkPolicy selects the persona-guard pod (the admin port must not be open to every pod)")
        return
    admin = {"admin", ports.get("admin")}
    http = {"http", ports.get("http")}
    for pol in policies:
        who = f"{where}: NetworkPolicy {pol['metadata']['name']}"
        if "Ingress" not in pol["spec"].get("policyTypes", ["Ingress"]):
            fail(who, "does not restrict Ingress")
        rules = pol["spec"].get("ingress", [])
        if not any(admits(r, http) and not r.get("from") for r in rules):
            fail(who, "must admit the http port from anywhere (Persona's deliveries)")
        for r in rules:
            if not admits(r, admin):
                continue
            peers = r.get("from") or []
            if not peers:
                fail(who, "admits the admin port from anywhere")
            for peer in peers:
                ns = peer.get("namespaceSelector") or {}
                if not (ns.get("matchLabels") or ns.get("matchExpressions")):
                    fail(who, f"admits the admin port from a peer that names no namespace: {peer}")


for manifest in sorted(HERE.glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    name = manifest.name
    # The persona-guard pod, its ConfigMap and the Service in front of it (an
    # example may hold other objects, e.g. the Redis it uses).
    kinds = {}
    for d in docs:
        if d["kind"] == "Deployment" and any(
            c["name"] == "persona-guard" for c in d["spec"]["template"]["spec"]["containers"]
        ):
            kinds["Deployment"] = d
        if d["kind"] == "ConfigMap" and "persona-guard.toml" in d.get("data", {}):
            kinds["ConfigMap"] = d
    if "Deployment" in kinds:
        labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
        for d in docs:
            if d["kind"] == "Service" and d["spec"]["selector"].items() <= labels.items():
                kinds["Service"] = d
    for kind in ("ConfigMap", "Deployment", "Service"):
        if kind not in kinds:
            fail(name, f"no {kind}")
    if failures:
        continue
    check_redis(name, docs, kinds["ConfigMap"]["data"]["persona-guard.toml"])
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    guard = containers.get("persona-guard")
    if guard is None:
        fail(name, "no persona-guard container")
        continue
    ports = {p["name"]: p["containerPort"] for p in guard["ports"]}
    check_network_policy(name, docs, kinds["Deployment"]["spec"]["template"]["metadata"]["labels"], ports)
    svc_targets = [p["targetPort"] for p in kinds["Service"]["spec"]["ports"]]
    if svc_targets != ["http"] or "http" not in ports:
        fail(name, f"the Service must target the sidecar's http port, not {svc_targets}")
    if "admin" in svc_targets:
        fail(name, "the admin port must not be in the Service")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = guard.get(probe, {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") != "admin":
            fail(name, f"{probe} must GET {path} on the admin port")
    if "preStop" not in guard.get("lifecycle", {}):
        fail(name, "no preStop delay on persona-guard")
    for cname, c in containers.items():
        if cname != "persona-guard" and not any("127.0.0.1" in a for a in c.get("args", [])):
            fail(name, f"container {cname} should listen on 127.0.0.1 only")
    grace = pod.get("terminationGracePeriodSeconds", 30)

    # The embedded route file, with the mounts laid out as in the pod.
    cm = kinds["ConfigMap"]["data"]["persona-guard.toml"]
    with tempfile.TemporaryDirectory() as root:
        root = pathlib.Path(root)
        for mount in guard["volumeMounts"]:
            rel = pathlib.Path(mount["mountPath"]).relative_to("/etc/persona-guard")
            (root / rel).mkdir(parents=True, exist_ok=True)
        (root / "config" / "persona-guard.toml").write_text(cm)
        (root / "secrets" / "webhook-secret").write_text("wbhsec_validate\n")
        if (root / "redis").exists():
            (root / "redis" / "password").write_text("validate\n")
        if (root / "admin").exists():
            (root / "admin" / "token").write_text("validate-admin-token\n")
        cfg = root / "config" / "persona-guard.toml"
        r = subprocess.run([binary, "check", "--config", str(cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(name, f"persona-guard check failed:\n{r.stdout}{r.stderr}")
        args = guard["args"]
        if args[:2] != ["run", "--config"] or not args[2].endswith("config/persona-guard.toml"):
            fail(name, f"unexpected persona-guard args {args}")
    grace_line = [l for l in cm.splitlines() if l.strip().startswith("grace_period")]
    if grace_line:
        secs = int(grace_line[0].split('"')[1].rstrip("s"))
        if secs + guard["lifecycle"]["preStop"]["sleep"]["seconds"] > grace:
            fail(name, "preStop + grace_period must fit in terminationGracePeriodSeconds")
    print(f"{name}: ok")

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
