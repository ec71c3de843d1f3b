#!/usr/bin/env python3
"""Offline checks of the Kubernetes examples (no cluster, no schema download):
every document parses and has the fields a Deployment/Service/ConfigMap needs,
the Service targets the sidecar's port, probes hit the admin port, the app
listens on localhost only, and every embedded route file passes
`persona-guard check` with its secrets laid out as the volumes mount them.

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


for manifest in sorted(HERE.glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    name = manifest.name
    for kind in ("ConfigMap", "Deployment", "Service"):
        if kind not in kinds:
            fail(name, f"no {kind}")
    if failures:
        continue
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    guard = containers.get("persona-guard")
    if guard is None:
        fail(name, "no persona-guard container")
        continue
    ports = {p["name"]: p["containerPort"] for p in guard["ports"]}
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
