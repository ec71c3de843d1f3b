//! `[headers]`: the names of the three trusted headers the proxy sets for the
//! application (and strips from clients).

use std::collections::HashSet;

use http::HeaderName;

use super::TrustedHeaders;
use super::check::Check;
use super::defaults::{
    DEFAULT_EVENT_CREATED_AT_HEADER, DEFAULT_EVENT_ID_HEADER, DEFAULT_EVENT_TYPE_HEADER,
};

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

/// The three names: valid, distinct, none of [`RESERVED_HEADERS`].
pub(super) fn compile(c: &mut Check) -> TrustedHeaders {
    let headers = TrustedHeaders {
        event_type: c.header_name("headers.event_type", DEFAULT_EVENT_TYPE_HEADER),
        event_id: c.header_name("headers.event_id", DEFAULT_EVENT_ID_HEADER),
        event_created_at: c
            .header_name("headers.event_created_at", DEFAULT_EVENT_CREATED_AT_HEADER),
    };
    let distinct: HashSet<_> = headers.names().into_iter().collect();
    if distinct.len() != 3 {
        c.problem("headers", "the three trusted header names must differ");
    }
    for (key, name) in [
        ("headers.event_type", &headers.event_type),
        ("headers.event_id", &headers.event_id),
        ("headers.event_created_at", &headers.event_created_at),
    ] {
        if let Some(reserved) = reserved_header(name) {
            // `reserved` is our own list's spelling, not the file's.
            c.problem_with(
                key,
                format!("`{reserved}` is a protocol header; choose a name of your own such as X-Persona-Event-Id"),
            );
        }
    }
    headers
}

/// The entry of [`RESERVED_HEADERS`] that `name` is, if any.
fn reserved_header(name: &HeaderName) -> Option<&'static str> {
    RESERVED_HEADERS
        .iter()
        .copied()
        .find(|r| *r == name.as_str())
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
        assert_eq!(c.headers.event_type.as_str(), "x-event-type");

        let text = format!(
            "[headers]\nevent_type = \"X-Same\"\nevent_id = \"x_same\"\nevent_created_at = \"Host\"\n{ROUTE}"
        );
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["headers", "headers.event_created_at"]);
        assert!(p[1].message.contains("`host`"), "{p:?}");
    }
}
