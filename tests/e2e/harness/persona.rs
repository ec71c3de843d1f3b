//! Persona's side: its signing scheme, implemented here independently of the
//! crate, realistic event bodies and signed deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{chunked_head, now, request, unique};

/// The route every generated configuration protects.
pub const ROUTE: &str = "/webhooks/persona";
pub const TRUSTED_TYPE: &str = "x-persona-event-type";
pub const TRUSTED_ID: &str = "x-persona-event-id";
pub const TRUSTED_CREATED_AT: &str = "x-persona-event-created-at";
/// The `created-at` of every generated event.
pub const CREATED_AT: &str = "2026-11-26T10:00:00.000Z";

pub fn event_id() -> String {
    unique("evt_e2e")
}

pub fn secret() -> String {
    unique("wbhsec_e2eSecret")
}

/// Hex HMAC-SHA256 of `<t>.<body>` keyed with the secret's raw bytes.
pub fn hmac_hex(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac accepts any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A `Persona-Signature` value with one set.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hmac_hex(secret, t, body))
}

/// A realistic Persona JSON:API event.
pub fn event_body(id: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "type": "event",
            "id": id,
            "attributes": {
                "name": name,
                "created-at": CREATED_AT,
                "redacted-at": null,
                "payload": {
                    "data": {
                        "type": "inquiry",
                        "id": "inq_e2eQ6qfY2K9xkmT3NwfhVn8",
                        "attributes": {
                            "status": "approved",
                            "reference-id": "user-4242",
                            "name-first": "Jane",
                            "name-last": "Doe",
                            "birthdate": "1990-01-01",
                            "created-at": "2026-11-26T09:58:12.000Z",
                            "completed-at": "2026-11-26T09:59:40.000Z"
                        },
                        "relationships": {
                            "template": {"data": {"type": "template", "id": "tmpl_e2eABC"}}
                        }
                    },
                    "included": []
                }
            }
        }
    }))
    .unwrap()
}

/// An event whose payload carries `filler` so that the whole body is about `size` bytes.
pub fn big_event_body(id: &str, name: &str, size: usize) -> Vec<u8> {
    let base = event_body(id, name).len() + 64;
    let n = size.saturating_sub(base);
    let filler: String = (0..n)
        .map(|i| {
            let c = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                [(i * 7 + i / 61) % 62];
            c as char
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "type": "event",
            "id": id,
            "attributes": {
                "name": name,
                "created-at": CREATED_AT,
                "payload": {"data": {"type": "document", "id": "doc_e2e", "attributes": {"front-photo": filler}}}
            }
        }
    }))
    .unwrap()
}

/// A signed delivery of `body` to `path`, with Persona's attempt headers.
pub fn delivery(path: &str, signature: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", signature),
            ("Persona-Webhook-Attempts-Made", "1"),
            ("Persona-Webhook-Attempts-Left", "5"),
        ],
        body,
    )
}

/// The head of a delivery to the route, signed now, whose body follows chunked.
pub fn signed_chunked_head(secret: &str, body: &[u8]) -> Vec<u8> {
    let sig = sign(secret, now(), body);
    chunked_head(
        "POST",
        ROUTE,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", &sig),
        ],
    )
}
