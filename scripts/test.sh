#!/usr/bin/env bash
# Runs every check and test persona-guard has, from a fresh machine:
# formatting, clippy, unit + property + end-to-end tests, and `check` on every
# shipped config file.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== house rules: file and function size, no import cycle (scripts/shape.py)"
python3 scripts/shape.py
echo "== cargo build"
cargo build --locked --all-targets
echo "== persona-guard check on shipped configs"
# config/edge.toml names a TLS certificate: make a throwaway one (gitignored),
# again once an old one has expired (`check` refuses an expired certificate).
if [ ! -f config/tls/tls.crt ] || ! openssl x509 -checkend 60 -noout -in config/tls/tls.crt >/dev/null 2>&1; then
  mkdir -p config/tls
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout config/tls/tls.key -out config/tls/tls.crt 2>/dev/null
fi
for f in config/*.toml; do
  PERSONA_WEBHOOK_SECRET=ci-placeholder-secret PERSONA_SANDBOX_WEBHOOK_SECRET=ci-placeholder-secret \
    ./target/debug/persona-guard check --config "$f"
done
echo "== Kubernetes examples"
python3 deploy/kubernetes/validate.py ./target/debug/persona-guard
echo "== Prometheus alert rules (promtool)"
promtool check rules deploy/prometheus/persona-guard-rules.yaml
(cd deploy/prometheus && promtool test rules persona-guard-rules.test.yaml)
echo "== Grafana dashboard"
python3 deploy/grafana/check-dashboard.py
echo "== hadolint Dockerfile"
hadolint Dockerfile
# The image's labels repeat Cargo.toml's version, description and licence.
for key in version description license; do
  want=$(sed -n "s/^$key = \"\(.*\)\"$/\1/p" Cargo.toml | head -1)
  case $key in
    version) got=$(sed -n 's/^ARG VERSION=//p' Dockerfile) ;;
    description) got=$(sed -n 's/.*org.opencontainers.image.description="\([^"]*\)".*/\1/p' Dockerfile) ;;
    license) got=$(sed -n 's/.*org.opencontainers.image.licenses="\([^"]*\)".*/\1/p' Dockerfile) ;;
  esac
  [ "$got" = "$want" ] || { echo "Dockerfile label $key is '$got', Cargo.toml says '$want'" >&2; exit 1; }
done
echo "== cargo test"
cargo test --locked --all-targets
