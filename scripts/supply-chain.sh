#!/usr/bin/env bash
# Licences, bans and sources of every dependency (cargo-deny, offline), per
# deny.toml. Installs cargo-deny when missing. Advisories need the RustSec
# database from GitHub: run `cargo deny check advisories` where it can be reached.
# Then writes a CycloneDX SBOM of the shipped binary's dependencies (build-time
# and dev dependencies left out) to target/sbom/persona-guard.cdx.json with
# cargo-cyclonedx (installed when missing; see below) and checks it lists
# persona-guard and pingora.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tools are installed as debug builds without debug info: they only read
# metadata, and on a 2-core machine that halves their build (cargo-deny: 1.5 min
# instead of several; cargo-cyclonedx: 1 min instead of 7), which keeps a
# fresh CI run under 15 minutes.
export CARGO_PROFILE_DEV_DEBUG=0
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --debug
cargo deny --offline check licenses bans sources

command -v cargo-cyclonedx >/dev/null 2>&1 || cargo install --locked --debug cargo-cyclonedx --version 0.5.9
mkdir -p target/sbom
rm -f persona-guard.cdx.json
cargo cyclonedx --format json --spec-version 1.5 --no-build-deps --override-filename persona-guard.cdx -q
mv persona-guard.cdx.json target/sbom/persona-guard.cdx.json
python3 - target/sbom/persona-guard.cdx.json <<'PY'
import json, re, sys
bom = json.load(open(sys.argv[1]))
version = re.search(r'^version = "(.*)"', open("Cargo.toml").read(), re.M).group(1)
top = bom["metadata"]["component"]
assert bom["bomFormat"] == "CycloneDX", bom["bomFormat"]
assert (top["name"], top["version"]) == ("persona-guard", version), (top["name"], top["version"])
names = {c["name"] for c in bom["components"]}
for crate in ("pingora", "pingora-core", "pingora-proxy"):
    assert crate in names, f"{crate} missing from the SBOM"
assert "criterion" not in names, "dev-dependencies leaked into the SBOM"
print(f"SBOM: {sys.argv[1]}, CycloneDX {bom['specVersion']}, {len(names)} components")
PY
