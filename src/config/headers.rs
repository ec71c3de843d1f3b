//! `[headers]`: the names of the three trusted headers the proxy sets for the
//! application (and strips from clients).

use std::collections::HashSet;

use super::TrustedHeaders;
use super::check::Check;
use crate::event::Fact;

/// Headers the proxy or HTTP itself owns: not usable as trusted header names.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-type",
    "persona-signature",
];

/// Each fact's key.
const KEYS: [(Fact, &str); 3] = [
    (Fact::Type, "headers.event_type"),
    (Fact::Id, "headers.event_id"),
    (Fact::CreatedAt, "headers.event_created_at"),
];

/// The three names: valid, distinct, none of [`RESERVED_HEADERS`].
pub(super) fn compile(c: &mut Check) -> TrustedHeaders {
    let headers: TrustedHeaders = KEYS.map(|(f, key)| (f, c.header_name(key))).into();
    let distinct: HashSet<_> = headers.iter().map(|(_, h)| h).collect();
    if distinct.len() != KEYS.len() {
        c.problem("headers", "the three trusted header names must differ");
    }
    for ((_, key), (_, name)) in KEYS.iter().zip(&headers) {
        if let Some(reserved) = RESERVED_HEADERS.iter().find(|r| **r == name.as_str()) {
            // `reserved` is our own list's spelling, not the file's.
            c.problem_with(
                *key,
                format!("`{reserved}` is a protocol header; choose a name of your own such as X-Persona-Event-Id"),
            );
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys};

    const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";

    #[test]
    fn names_are_canonical_distinct_and_not_reserved() {
        let text = format!("[headers]\nevent_type = \"X_Event_Type\"\n{ROUTE}");
        let c = from_str(&text, &env()).unwrap();
        assert_eq!(c.policy.headers[0].1.as_str(), "x-event-type");

        let text = format!(
            "[headers]\nevent_type = \"X-Same\"\nevent_id = \"x_same\"\nevent_created_at = \"Host\"\n{ROUTE}"
        );
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["headers", "headers.event_created_at"]);
        assert!(p[1].message.contains("`host`"), "{p:?}");
    }
}
