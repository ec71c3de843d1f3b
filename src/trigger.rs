//! `persona-guard trigger`: sends a realistic, signed Persona event to a URL
//! (the proxy's webhook route), as `stripe trigger` does for Stripe.
//!
//! The event is Persona's JSON:API shape (`data.type = "event"`, a fresh
//! random `evt_` id, `attributes.name` and `created-at` now, a plausible
//! payload with obviously fake data), with the attribute keys spelled in the
//! chosen inflection, signed by [`crate::signature::sign`]. The request goes
//! over plain HTTP/1.1 through [`crate::outbound`]: an `https://` URL is
//! refused (use a plain-HTTP URL or the proxy's loopback listener).

use std::time::{Duration, SystemTime};

use rand::Rng;
use rand::distributions::Alphanumeric;
use serde_json::{Map, Value, json};

use crate::outbound::{self, Client};
use crate::signature;

/// How attribute keys are spelled (Persona's webhook setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inflection {
    #[default]
    Kebab,
    Camel,
    Snake,
}

impl Inflection {
    /// A kebab-case key in this inflection.
    fn key(self, kebab: &str) -> String {
        match self {
            Inflection::Kebab => kebab.to_string(),
            Inflection::Snake => kebab.replace('-', "_"),
            Inflection::Camel => {
                let mut out = String::new();
                let mut upper = false;
                for c in kebab.chars() {
                    if c == '-' {
                        upper = true;
                    } else if upper {
                        out.push(c.to_ascii_uppercase());
                        upper = false;
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }
}

/// A Persona-like id: `prefix` + 25 random letters and digits.
pub fn random_id(prefix: &str) -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(25)
        .map(char::from)
        .collect();
    format!("{prefix}{tail}")
}

/// Now as Persona writes times: RFC 3339, milliseconds, UTC.
fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_millis(now).to_string()
}

/// The payload's object for an event type (`inquiry.approved` → an approved
/// inquiry), in kebab-case; `None` for a type of no known family.
fn payload(event_type: &str, at: &str) -> Value {
    let (family, action) = event_type.split_once('.').unwrap_or((event_type, ""));
    let status = action.rsplit('.').next().unwrap_or(action);
    let object = match family {
        "inquiry" => json!({
            "type": "inquiry",
            "id": random_id("inq_"),
            "attributes": {
                "status": status,
                "reference-id": "demo-user-0001",
                "name-first": "Testy",
                "name-last": "McTestface",
                "birthdate": "1970-01-01",
                "created-at": at,
                "completed-at": at,
            },
            "relationships": {
                "template": {"data": {"type": "template", "id": random_id("tmpl_")}}
            }
        }),
        "verification" => json!({
            "type": "verification/government-id",
            "id": random_id("ver_"),
            "attributes": {
                "status": status,
                "name-first": "Testy",
                "name-last": "McTestface",
                "country-code": "US",
                "created-at": at,
                "completed-at": at,
            },
            "relationships": {
                "inquiry": {"data": {"type": "inquiry", "id": random_id("inq_")}}
            }
        }),
        "report" => json!({
            "type": "report/watchlist",
            "id": random_id("rep_"),
            "attributes": {
                "status": status,
                "has-match": false,
                "created-at": at,
                "completed-at": at,
            }
        }),
        "case" => json!({
            "type": "case",
            "id": random_id("case_"),
            "attributes": {
                "status": status,
                "name": "Demo case for Testy McTestface",
                "created-at": at,
                "updated-at": at,
            }
        }),
        _ => Value::Null,
    };
    json!({"data": object, "included": []})
}

/// Renames every object key with `-` into `inflection`.
fn inflect(v: Value, inflection: Inflection) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (inflection.key(&k), inflect(v, inflection)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| inflect(v, inflection)).collect()),
        other => other,
    }
}

/// The event's JSON body.
pub fn event_body(event_type: &str, id: &str, inflection: Inflection, now: SystemTime) -> Vec<u8> {
    let at = timestamp(now);
    let body = json!({
        "data": {
            "type": "event",
            "id": id,
            "attributes": {
                "name": event_type,
                "created-at": at,
                "redacted-at": null,
                "payload": payload(event_type, &at),
            }
        }
    });
    serde_json::to_vec(&inflect(body, inflection)).unwrap_or_default()
}

/// Where a plain-HTTP URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as written (the `Host` header).
    pub authority: String,
    /// The path and query (at least `/`).
    pub path: String,
}

/// Parses `http://host[:port]/path`. `https://` is refused: the client speaks
/// plain HTTP only.
pub fn parse_url(url: &str) -> Result<Target, String> {
    if url.starts_with("https://") {
        return Err(
            "https:// is not supported: use a plain-HTTP URL or the proxy's loopback listener"
                .into(),
        );
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("the URL must start with http://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("the URL has no host (or has user information)".into());
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the URL's path has spaces or control characters".into());
    }
    Ok(Target {
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// The answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// `HTTP/1.1 200 OK` (the status's own reason phrase).
    pub status_line: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, outbound::Error),
    #[error("no answer from {0}: {1}")]
    Read(String, outbound::Error),
}

/// One signed delivery: POST `body` to `target` with Persona's headers and
/// `extra` ones (a bearer token, a route's required headers).
pub fn send(
    target: &Target,
    secret: &[u8],
    body: &[u8],
    attempts_made: u32,
    attempts_left: u32,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<Answer, SendError> {
    let authority = &target.authority;
    let t = crate::clock::unix_now().as_secs() as i64;
    let request = http::Request::post(format!("http://{authority}{}", target.path))
        .header("user-agent", "persona-guard-trigger")
        .header("content-type", "application/json")
        .header("persona-signature", signature::sign(secret, t, body))
        .header("persona-webhook-attempts-made", attempts_made)
        .header("persona-webhook-attempts-left", attempts_left);
    let request = extra
        .iter()
        .fold(request, |r, (name, value)| r.header(name, value))
        .body(body)
        .map_err(|e| SendError::Connect(authority.clone(), outbound::Error::Http(e)))?;
    let client = Client::new(Duration::from_secs(5), Duration::from_secs(60));
    let answer = client
        .send(request)
        .map_err(|e| match outbound::not_connected(&e) {
            true => SendError::Connect(authority.clone(), e),
            false => SendError::Read(authority.clone(), e),
        })?;
    let status = answer.status();
    Ok(Answer {
        status_line: format!(
            "{:?} {} {}",
            answer.version(),
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string(),
        status: status.as_u16(),
        body: answer.into_body(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_a_persona_event_in_each_inflection() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (inflection, key) in [
            (Inflection::Kebab, "created-at"),
            (Inflection::Camel, "createdAt"),
            (Inflection::Snake, "created_at"),
        ] {
            let body = event_body("inquiry.approved", "evt_x", inflection, now);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["data"]["type"], "event");
            assert_eq!(v["data"]["id"], "evt_x");
            let a = &v["data"]["attributes"];
            assert_eq!(a["name"], "inquiry.approved");
            assert_eq!(a[key], "2027-01-15T08:00:00.000Z");
            assert_eq!(a["payload"]["data"]["type"], "inquiry");
            assert_eq!(a["payload"]["data"]["attributes"]["status"], "approved");
            // The proxy reads it.
            let ev = crate::event::parse(&body).unwrap();
            assert_eq!(ev.name, "inquiry.approved");
            assert_eq!(ev.created_at.as_deref(), Some("2027-01-15T08:00:00.000Z"));
        }
        for (t, object) in [
            ("verification.passed", "verification/government-id"),
            ("report.run.completed", "report/watchlist"),
            ("case.created", "case"),
        ] {
            let body = event_body(t, "evt_y", Inflection::Kebab, now);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["data"]["attributes"]["payload"]["data"]["type"], object);
        }
    }

    #[test]
    fn ids_are_persona_like_and_fresh() {
        let a = random_id("evt_");
        assert_eq!(a.len(), 29);
        assert!(a[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, random_id("evt_"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/webhooks/persona").unwrap(),
            Target {
                authority: "127.0.0.1:8080".into(),
                path: "/webhooks/persona".into()
            }
        );
        assert_eq!(parse_url("http://localhost").unwrap().path, "/");
        assert!(
            parse_url("https://x/y")
                .unwrap_err()
                .contains("plain-HTTP URL")
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
