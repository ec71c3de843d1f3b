//! Reading the two or three fields persona-guard needs from a Persona event.
//!
//! Only `data.id`, `data.attributes.name` and the created-at attribute are
//! decoded (borrowed where the JSON has no escapes); the rest of the document is
//! skipped by the parser without building a tree. Values end up in HTTP headers,
//! so they are checked to be short, printable and non-empty.
//!
//! A webhook's `api-key-inflection` (kebab, the default; camel; snake) renames
//! the created-at attribute to `created-at`, `createdAt` or `created_at`; all
//! three are read. `data.id` and `data.attributes.name` are single words, the
//! same under every inflection, and the payload (also inflected) is never read.
//! A body carrying two of the created-at spellings is refused like any other
//! repeated field, so the proxy and the app cannot read different values.

use std::borrow::Cow;

use serde::Deserialize;

/// Longest event id, type or created-at accepted (they become header values).
pub const MAX_FIELD_LEN: usize = 256;

/// The fields of a delivery that drive routing, replay protection and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub created_at: Option<Cow<'a, str>>,
}

/// What an admitted delivery tells the app in the trusted headers, and the
/// spool keeps with it: `None` for what its route does not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub id: Option<String>,
    pub event_type: Option<String>,
    pub created_at: Option<String>,
}

/// Which of the [`Facts`] a trusted header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    Type,
    Id,
    CreatedAt,
}

impl Facts {
    /// An event's id, type and created-at.
    pub fn of(ev: &Event<'_>) -> Facts {
        Facts {
            id: Some(ev.id.to_string()),
            event_type: Some(ev.name.to_string()),
            created_at: ev.created_at.as_ref().map(|c| c.to_string()),
        }
    }

    pub fn get(&self, fact: Fact) -> Option<&str> {
        match fact {
            Fact::Type => self.event_type.as_deref(),
            Fact::Id => self.id.as_deref(),
            Fact::CreatedAt => self.created_at.as_deref(),
        }
    }
}

/// Why a verified body is not a usable event. Never carries body content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the body is not a JSON object with a `data` member")]
    NotJson,
    #[error("data.id is missing, empty, too long or not printable")]
    BadId,
    #[error("data.attributes.name is missing, empty, too long or not printable")]
    BadName,
    #[error("data.attributes.created-at (createdAt, created_at) is too long or not printable")]
    BadCreatedAt,
    #[error(
        "the field at the route's id_pointer is missing, not a string or number, empty, too long or not printable"
    )]
    BadPointerId,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

// `#[serde(borrow)]` directly on a `Cow<str>` field borrows from the input when
// the string has no escapes (inside an `Option` serde would always copy), so a
// missing field is the empty string and is refused below.
#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    attributes: Attributes<'a>,
}

#[derive(Default, Deserialize)]
struct Attributes<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        rename = "created-at",
        alias = "createdAt",
        alias = "created_at"
    )]
    created_at: Option<Cow<'a, str>>,
}

fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_FIELD_LEN && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Extracts the event fields from a (verified) body.
pub fn parse(body: &[u8]) -> Result<Event<'_>, EventError> {
    let env: Envelope<'_> = serde_json::from_slice(body).map_err(|_| EventError::NotJson)?;
    let Data { id, attributes } = env.data;
    if !header_safe(&id) {
        return Err(EventError::BadId);
    }
    let Attributes { name, created_at } = attributes;
    if !header_safe(&name) {
        return Err(EventError::BadName);
    }
    let created_at = match created_at {
        Some(c) if !header_safe(c.as_ref()) => return Err(EventError::BadCreatedAt),
        other => other,
    };
    Ok(Event {
        id,
        name,
        created_at,
    })
}

/// The id at `pointer` (RFC 6901) in a (verified) body of a signature-only
/// route: a string (checked like `data.id`) or a number (as written in JSON
/// by serde_json, e.g. `42`). Unlike [`parse`], the whole document is built.
pub fn id_at(body: &[u8], pointer: &str) -> Result<String, EventError> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|_| EventError::NotJson)?;
    let id = match doc.pointer(pointer) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(EventError::BadPointerId),
    };
    if header_safe(&id) {
        Ok(id)
    } else {
        Err(EventError::BadPointerId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_persona_event() {
        let body = br#"{"data":{"type":"event","id":"evt_123","attributes":{"name":"inquiry.approved","created-at":"2026-11-26T10:00:00.000Z","payload":{"data":{"id":"inq_1","x":[1,2,{"y":null}]}}}}}"#;
        let e = parse(body).unwrap();
        assert_eq!(e.id, "evt_123");
        assert_eq!(e.name, "inquiry.approved");
        assert_eq!(e.created_at.as_deref(), Some("2026-11-26T10:00:00.000Z"));
        assert!(matches!(e.id, Cow::Borrowed(_)));
    }

    #[test]
    fn created_at_is_read_under_every_inflection() {
        for key in ["created-at", "createdAt", "created_at"] {
            let body = format!(
                r#"{{"data":{{"id":"evt_1","attributes":{{"name":"inquiry.approved","{key}":"2026-11-26T10:00:00.000Z","payload":{{}}}}}}}}"#
            );
            let e = parse(body.as_bytes()).unwrap();
            assert_eq!(e.id, "evt_1", "{key}");
            assert_eq!(e.name, "inquiry.approved", "{key}");
            assert_eq!(
                e.created_at.as_deref(),
                Some("2026-11-26T10:00:00.000Z"),
                "{key}"
            );
        }
        // Other spellings are not the created-at.
        let e = parse(
            br#"{"data":{"id":"e","attributes":{"name":"n","CreatedAt":"x","created at":"y"}}}"#,
        )
        .unwrap();
        assert_eq!(e.created_at, None);
        // Each spelling is checked like the kebab one.
        assert_eq!(
            parse(br#"{"data":{"id":"e","attributes":{"name":"n","createdAt":"\u0000"}}}"#),
            Err(EventError::BadCreatedAt)
        );
        // Two spellings at once are a repeated field.
        assert_eq!(
            parse(br#"{"data":{"id":"e","attributes":{"name":"n","created-at":"a","created_at":"b"}}}"#),
            Err(EventError::NotJson)
        );
    }

    #[test]
    fn ids_at_a_pointer() {
        let body = br#"{"inquiry":{"id":"inq_1","n":42,"a/b":"x","f":1.5,"e":"","o":{},"z":null}}"#;
        assert_eq!(id_at(body, "/inquiry/id").as_deref(), Ok("inq_1"));
        assert_eq!(id_at(body, "/inquiry/n").as_deref(), Ok("42"));
        assert_eq!(id_at(body, "/inquiry/a~1b").as_deref(), Ok("x"));
        assert_eq!(id_at(body, "/inquiry/f").as_deref(), Ok("1.5"));
        for bad in [
            "/inquiry/e",
            "/inquiry/o",
            "/inquiry/z",
            "/inquiry/none",
            "/inquiry",
        ] {
            assert_eq!(id_at(body, bad), Err(EventError::BadPointerId), "{bad}");
        }
        assert_eq!(id_at(b"nope", "/a"), Err(EventError::NotJson));
        assert_eq!(
            id_at(br#"{"a":"x\ny"}"#, "/a"),
            Err(EventError::BadPointerId)
        );
    }

    #[test]
    fn created_at_is_optional_and_escapes_are_decoded() {
        let e = parse(br#"{"data":{"id":"evt_\u0031","attributes":{"name":"a.b"}}}"#).unwrap();
        assert_eq!(e.id, "evt_1");
        assert_eq!(e.created_at, None);
    }

    #[test]
    fn rejects_what_cannot_be_used() {
        assert_eq!(parse(b"not json"), Err(EventError::NotJson));
        assert_eq!(parse(b"[]"), Err(EventError::NotJson));
        assert_eq!(parse(br#"{"data":{}}"#), Err(EventError::BadId));
        assert_eq!(parse(br#"{"data":{"id":""}}"#), Err(EventError::BadId));
        assert_eq!(parse(br#"{"data":{"id":7}}"#), Err(EventError::NotJson));
        assert_eq!(parse(br#"{"data":{"id":"e"}}"#), Err(EventError::BadName));
        assert_eq!(
            parse(br#"{"data":{"id":"e\n","attributes":{"name":"n"}}}"#),
            Err(EventError::BadId)
        );
        assert_eq!(
            parse(br#"{"data":{"id":"e","attributes":{"name":"n","created-at":"\r"}}}"#),
            Err(EventError::BadCreatedAt)
        );
        let long = format!(
            r#"{{"data":{{"id":"{}","attributes":{{"name":"n"}}}}}}"#,
            "a".repeat(MAX_FIELD_LEN + 1)
        );
        assert_eq!(parse(long.as_bytes()), Err(EventError::BadId));
        // Two ids would let the proxy and the app disagree on which one counts.
        assert_eq!(
            parse(br#"{"data":{"id":"a","id":"b","attributes":{"name":"n"}}}"#),
            Err(EventError::NotJson)
        );
    }
}
