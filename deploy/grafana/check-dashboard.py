#!/usr/bin/env python3
"""Checks persona-guard-dashboard.json offline: it parses, asks for one
Prometheus datasource input (DS_PROMETHEUS) that every panel and query uses,
panel ids are unique, and every query is valid PromQL (`promtool check rules`
on the queries, with Grafana's $__ variables replaced). scripts/test.sh runs it;
tests/e2e/operator_kit.rs checks that every metric it names is exported."""
import json, os, subprocess, sys, tempfile

here = os.path.dirname(os.path.abspath(__file__))
d = json.load(open(os.path.join(here, "persona-guard-dashboard.json")))
ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"], d["__inputs"]
panels = [p for p in d["panels"] if p["type"] != "row"]
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), "duplicate panel ids"
exprs = []
for p in panels:
    assert p["datasource"] == ds, p["title"]
    assert p["targets"], p["title"]
    for t in p["targets"]:
        assert t["datasource"] == ds, p["title"]
        exprs.append((p["title"], t["expr"]))
rules = ["groups:", "  - name: dashboard", "    rules:"]
for i, (title, e) in enumerate(exprs):
    e = e.replace("$__rate_interval", "5m").replace("$__range", "1h")
    rules += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(e)}"]
with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    f.write("\n".join(rules) + "\n")
r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
os.unlink(f.name)
if r.returncode != 0:
    sys.exit(f"dashboard queries are not valid PromQL:\n{r.stdout}{r.stderr}")
print(f"dashboard: {len(panels)} panels, {len(exprs)} queries, all valid PromQL")
