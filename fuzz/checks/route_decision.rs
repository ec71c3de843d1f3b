//! The route decision on arbitrary request targets, against independent
//! readers: whatever the WHATWG URL parser (Node's `new URL`, here the `url`
//! crate) or a decode-once router (werkzeug, Starlette) routes under the route
//! must be covered by some reading (`path::any_reading`). A crash here is a
//! bypass some real framework would take. A dotted route (`/webhooks/persona.v2`)
//! must cover what Express's `{.:format}` runs under it (a suffix after any
//! dot of the last segment). Also: no panic, and the config-side
//! `normalize` stays a clean absolute path that readings agree with.
//!
//! Shared by the cargo-fuzz target of the same name and by the ordinary
//! test `tests/fuzz_corpus.rs`, which runs it over the committed corpus.

use persona_guard::path;

const ROUTE: &str = "/webhooks/persona";

fn under(p: &str) -> bool {
    p.eq_ignore_ascii_case(ROUTE)
        || (p.len() > ROUTE.len()
            && p.as_bytes()[..ROUTE.len()].eq_ignore_ascii_case(ROUTE.as_bytes())
            && p.as_bytes()[ROUTE.len()] == b'/')
}

/// Express's `/webhooks/persona.v2{.:format}` on the raw path (before `?`
/// and `#`), case-insensitive, with an optional trailing slash.
fn express_dotted(raw: &str) -> bool {
    const DOTTED: &str = "/webhooks/persona.v2";
    let raw = raw.strip_suffix('/').unwrap_or(raw);
    raw.len() >= DOTTED.len()
        && raw.is_char_boundary(DOTTED.len())
        && raw[..DOTTED.len()].eq_ignore_ascii_case(DOTTED)
        && (raw.len() == DOTTED.len()
            || raw[DOTTED.len()..]
                .strip_prefix('.')
                .is_some_and(|f| !f.is_empty() && !f.contains('/')))
}

pub fn check(data: &[u8]) {
    let dotted = path::RoutePath::new(b"/webhooks/persona.v2");
    if let Ok(s) = std::str::from_utf8(data) {
        let raw = s.split(['?', '#']).next().unwrap_or("");
        if express_dotted(raw) {
            let c = path::any_reading(data, |r| dotted.covers(r));
            assert_ne!(c, Ok(false), "Express runs {s:?} under the dotted route");
        }
    }
    let route = path::RoutePath::new(ROUTE.as_bytes());
    let covered = path::any_reading(data, |r| route.covers(r));
    if let Ok(s) = std::str::from_utf8(data) {
        let base = url::Url::parse("http://localhost/").unwrap();
        if let (Ok(u), Ok(c)) = (base.join(s), covered) {
            assert!(c || !under(u.path()), "WHATWG routes {s:?} to {}", u.path());
            let decoded = percent_encoding::percent_decode_str(u.path()).decode_utf8_lossy();
            assert!(
                c || !under(&decoded),
                "WHATWG + decoding routes {s:?} under the route"
            );
        }
        let raw = s.split(['?', '#']).next().unwrap_or("");
        let once = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        if let Ok(c) = covered {
            assert!(
                c || !under(&once),
                "decode-once routes {s:?} under the route"
            );
            assert!(c || !under(raw), "the raw target {s:?} is under the route");
        }
    }
    if let Ok(n) = path::normalize(data) {
        assert!(n.starts_with(b"/"));
        assert!(n == b"/" || !n.ends_with(b"/"));
        assert!(!n.windows(2).any(|w| w == b"//"));
        assert!(!n.iter().any(|b| b.is_ascii_uppercase()));
        if path::is_within(&n, ROUTE.as_bytes()) {
            assert_eq!(covered, Ok(true), "normalize puts it under the route");
        }
    }
}
