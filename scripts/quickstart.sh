#!/usr/bin/env bash
# Builds persona-guard and runs it with config/persona-guard.toml (memory replay
# store) in front of its built-in echo upstream on 127.0.0.1:3000.
# Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --build
cargo build --release --locked

bin=./target/release/persona-guard
if [ -z "${PERSONA_WEBHOOK_SECRET:-}" ]; then
  export PERSONA_WEBHOOK_SECRET=wbhsec_quickstart_demo
  echo "quickstart: PERSONA_WEBHOOK_SECRET was not set; using the demo secret '$PERSONA_WEBHOOK_SECRET'"
fi

"$bin" echo --listen 127.0.0.1:3000 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT

cat <<'TRY'
quickstart: proxy on http://127.0.0.1:8080, admin on http://127.0.0.1:9090
Try, in another shell (with the same PERSONA_WEBHOOK_SECRET exported):
  ./target/release/persona-guard trigger inquiry.approved --secret-env PERSONA_WEBHOOK_SECRET --again   # 200 forwarded, then duplicate
  body='{"data":{"type":"event","id":"evt_demo_1","attributes":{"name":"inquiry.approved","created-at":"2026-01-01T00:00:00.000Z"}}}'
  sig=$(printf '%s' "$body" | ./target/release/persona-guard sign --secret-env PERSONA_WEBHOOK_SECRET -)
  curl -i http://127.0.0.1:8080/webhooks/persona -H "Persona-Signature: $sig" --data-binary "$body"        # 200, forwarded
  curl -i http://127.0.0.1:8080/webhooks/persona -H "Persona-Signature: $sig" --data-binary "$body"        # 200 duplicate
  curl -i http://127.0.0.1:8080/webhooks/persona -H "Persona-Signature: $sig" --data-binary "${body/demo/x}" # 401 invalid_signature
TRY
"$bin" run --config config/persona-guard.toml
