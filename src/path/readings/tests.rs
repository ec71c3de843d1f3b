use super::*;
use proptest::prelude::*;

const ROUTE: &[u8] = b"/webhooks/persona";

fn route() -> RoutePath {
    RoutePath::new(ROUTE)
}

fn covered(target: &[u8]) -> Result<bool, PathError> {
    let r = route();
    any_reading(target, |reading| r.covers(reading))
}

fn readings_of(target: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    any_reading(target, |reading| {
        let joined: Vec<String> = reading
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        out.push(joined.join("/"));
        false
    })
    .expect("decodable");
    out
}

/// Spellings of the route's path that must stay under the route ([`covered_spellings`]).
const COVERED_SPELLINGS: &[&str] = &[
    // as sent, encodings, separators, case, slashes, trailing slash, query, fragment
    "/webhooks/persona",
    "/webhooks/persona/",
    "/webhooks/persona/sub/path",
    "/WEBHOOKS/Persona",
    "//webhooks///persona",
    "/webhooks%2Fpersona",
    "/webhooks%2fpersona",
    "/webhooks%5Cpersona",
    "/webhooks\\persona",
    "/%77ebhooks/persona",
    "/webhooks%252Fpersona",
    "/webhooks%25252Fpersona",
    "/webhooks/persona?x=1",
    "/webhooks/persona#frag",
    "/webhooks/persona%3Fx=1",
    "/webhooks/persona%23x",
    "webhooks/persona",
    // dot segments resolved ...
    "/x/../webhooks/persona",
    "/../webhooks/persona",
    "/webhooks/./persona",
    "/webhooks/x/%2e%2e/persona",
    "/a%2Fb/%2e%2e/webhooks/persona",
    "/webhooks/persona//..",
    // ... and literal (Express and Flask route `/webhooks/persona/..` under the route)
    "/webhooks/persona/..",
    "/webhooks/persona/%2e%2e",
    "/webhooks/persona/%2E.",
    "/webhooks/persona/.%2e",
    "/webhooks/persona/..;x",
    "/webhooks/persona/../other",
    "/webhooks/persona/.",
    // parameters
    "/webhooks;a=b/persona",
    "/webhooks/persona;jsessionid=1",
    "/webhooks%3Bx/persona",
    "/webhooks/..;x/webhooks/persona",
    // suffixes (Rails' format)
    "/webhooks/persona.json",
    "/webhooks/persona.",
    "/webhooks/persona%2e",
    "/webhooks/persona%2ejson",
    "/webhooks/persona.tar.gz",
    "/webhooks/persona.json/",
    // white space: Starlette's `$` before a final newline, Python's split
    "/webhooks/persona%0a",
    "/webhooks/persona%0D%0A",
    "/webhooks/persona.json%20",
    "/webhooks/persona\x1c/x",
    // absolute-form, any scheme, any case, a port, userinfo
    "http://host/webhooks/persona",
    "HTTP://host/webhooks/persona",
    "https://host:80/webhooks/persona",
    "hTtPs://h/webhooks/persona?x",
    "foo+bar.baz://h/webhooks/persona",
    "http://user@host/webhooks/persona",
    "http://host//webhooks/persona",
    "http:/host/webhooks/persona",
    "http:host/webhooks/persona",
    "http:/webhooks/persona",
    "http:webhooks/persona",
    "http:\\\\host\\webhooks\\persona",
    "http://host\\webhooks/persona",
    // scheme-relative
    "//host/webhooks/persona",
    "/\\host/webhooks/persona",
    "\\\\host/webhooks/persona",
    "///host/webhooks/persona",
    "//host\\webhooks\\persona",
    "//user@host:1/webhooks/persona",
    // stacked
    "//h/x/../webhooks/persona.json;p",
    "HTTP://h/%57EBHOOKS%252fpersona%2e",
    "HTTP://h/%57EBHOOKS%252fpersona/%2e%2e",
];

/// Every class an attacker tried, and what each framework makes of it.
#[test]
fn covered_spellings() {
    for t in COVERED_SPELLINGS {
        assert_eq!(
            covered(t.as_bytes()),
            Ok(true),
            "{t} escaped the route; readings: {:?}",
            readings_of(t.as_bytes())
        );
    }
}

/// Raw bytes Python's request-line split treats as white space end the path.
#[test]
fn covered_raw_bytes() {
    for t in [
        &b"/webhooks/persona\x85"[..],
        b"/webhooks/persona\xa0x",
        b"/webhooks/persona\x1f",
        b"http://h/webhooks/persona\x85",
        // Found by the route_decision fuzz target: WHATWG drops tabs and newlines.
        b"HTTPS://h:80/webhooks/per\n\n\n\nsona",
        b"/webhooks/per\tsona",
        b"\x01/webhooks/persona\t",
    ] {
        assert_eq!(covered(t), Ok(true), "{}", String::from_utf8_lossy(t));
    }
    // UTF-8 whose bytes hold no such byte stays a name.
    assert_eq!(covered("/webhooks/persona\u{e9}".as_bytes()), Ok(false));
}

/// Paths no framework routes under the route stay outside it: the decision
/// must not turn every request into a webhook delivery.
#[test]
fn outside_spellings() {
    for t in [
        "/",
        "",
        "*",
        "/webhooks",
        "/webhooks/",
        "/webhooks/personal",
        "/webhooks/persona-sandbox",
        "/webhooks/personax.json",
        "/api/webhooks/persona",
        "/other/webhooks/persona",
        "/webhooks/x/persona",
        "/static/app.js",
        "/favicon.ico",
        "/webhooks/%70ersonal",
        "/webhooks/persona%2Dx",
        "/webhooks/persona%3Dx",
        "http://host/other",
        "http://host/api/webhooks/persona",
        "//host/other/webhooks/persona",
        "/health?next=/webhooks/persona",
        "/health#/webhooks/persona",
        "/a/b/../c",
    ] {
        assert_eq!(
            covered(t.as_bytes()),
            Ok(false),
            "{t} was read under the route; readings: {:?}",
            readings_of(t.as_bytes())
        );
    }
}

#[test]
fn errors() {
    for (t, want) in [
        (&b"/webhooks/%zz"[..], PathError::BadEncoding),
        (b"/a%", PathError::BadEncoding),
        (b"http://h/a%2", PathError::BadEncoding),
        (b"/a%00b", PathError::Nul),
        (b"/a\0b", PathError::Nul),
        (b"/a%2500", PathError::Nul),
    ] {
        assert_eq!(covered(t), Err(want), "{}", String::from_utf8_lossy(t));
    }
    // What follows `?` or `#` is not part of the path.
    assert_eq!(covered(b"/ok?%zz\0"), Ok(false));
}

/// A dotted route is reached with a suffix cut at any dot, not only the
/// first (Express's `{.:format}` runs `/webhooks/persona.v2` for
/// `/webhooks/persona.v2.json`).
#[test]
fn a_dotted_route_is_reached_with_a_suffix() {
    let r = RoutePath::new(b"/webhooks/persona.v2");
    let on = |t: &str| any_reading(t.as_bytes(), |reading| r.covers(reading));
    for t in [
        "/webhooks/persona.v2",
        "/webhooks/persona.v2.json",
        "/webhooks/persona.v2.tar.gz",
        "/webhooks/persona.v2.",
        "/WEBHOOKS/Persona.V2.xml/",
        "/webhooks/persona.v2%2ejson",
        "/webhooks/persona.v2.json%0a",
        "http://h/webhooks/persona.v2.json?x=1",
    ] {
        assert_eq!(on(t), Ok(true), "{t}: {:?}", readings_of(t.as_bytes()));
    }
    for t in [
        "/webhooks/persona",
        "/webhooks/persona.json",
        "/webhooks/persona.v3.json",
        "/webhooks/persona.v2x.json",
    ] {
        assert_eq!(on(t), Ok(false), "{t}");
    }
    // Each cut is one more reading, never a copy per dot.
    assert_eq!(readings_of(b"/a/b.c.d").len(), 3);
}

#[test]
fn a_plain_target_has_one_reading() {
    assert_eq!(readings_of(b"/api/users/7?x=%zz"), ["/api/users/7"]);
    // `.` opens the other readings, which are few.
    assert!(readings_of(b"/static/app.js").len() <= 2);
}

#[test]
fn root_route_covers_everything() {
    let root = RoutePath::new(b"/");
    assert_eq!(root.depth(), 0);
    assert_eq!(any_reading(b"/anything", |r| root.covers(r)), Ok(true));
    assert_eq!(any_reading(b"", |r| root.covers(r)), Ok(true));
}

// ------------------------------------------------------------- oracles

/// Independent readers, written with other code than the decision's: what
/// a router built on each would route under the route.
fn oracles_route_under(target: &[u8]) -> Vec<&'static str> {
    let under = |p: &str| p == "/webhooks/persona" || p.starts_with("/webhooks/persona/");
    let mut out = Vec::new();
    let Ok(s) = std::str::from_utf8(target) else {
        return out;
    };
    // Node's `new URL(req.url, base).pathname` (the `url` crate is WHATWG URL).
    let base = url::Url::parse("http://localhost/").expect("base");
    if let Ok(u) = base.join(s) {
        if under(u.path()) {
            out.push("whatwg");
        }
        if under(&u.path().to_ascii_lowercase()) {
            out.push("whatwg, case-insensitive");
        }
        let decoded = percent_encoding::percent_decode_str(u.path()).decode_utf8_lossy();
        if under(&decoded) {
            out.push("whatwg, then decoded");
        }
    }
    // Express: the raw path before `?`, case-insensitive.
    let raw = s.split(['?', '#']).next().unwrap_or("");
    if under(&raw.to_ascii_lowercase()) {
        out.push("raw, case-insensitive");
    }
    // werkzeug / Starlette: decoded once, then matched.
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if under(&decoded) || under(decoded.trim_end_matches('\n')) {
        out.push("decoded once");
    }
    out
}

#[test]
fn oracles_see_the_classes() {
    // The oracles are real readers: they route these under the route.
    for t in [
        "//h/webhooks/persona",
        "/x/../webhooks/persona",
        "/webhooks%2Fpersona",
    ] {
        assert!(!oracles_route_under(t.as_bytes()).is_empty(), "{t}");
    }
    assert!(oracles_route_under(b"/webhooks/personal").is_empty());
}

// ------------------------------------------------------------- properties

/// A segment of a path under the route, respelled the ways routers accept.
fn respell(segment: &str, how: u8, mask: u64) -> String {
    let bytes: Vec<String> = segment
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            let bit = (mask >> (i % 64)) & 1 == 1;
            match (how % 4, bit) {
                (_, false) => (b as char).to_string(),
                (0, true) => (b as char).to_ascii_uppercase().to_string(),
                (1, true) => format!("%{b:02X}"),
                (2, true) => format!("%25{b:02x}"),
                _ => format!("%{b:02x}"),
            }
        })
        .collect();
    bytes.concat()
}

/// Something a router skips between two segments: plain separators, and
/// ones that rely on dot segments being resolved.
fn separator() -> impl Strategy<Value = (&'static str, bool)> {
    let plain = ["/", "//", "\\", "%2F", "%2f", "%5C", "%252F", "/;p/"];
    let dotted = [
        "/./",
        "/%2e/",
        "/%2E/",
        "/x/../",
        "/x/%2e%2e/",
        "/x/..;p/",
        "/.//",
    ];
    prop_oneof![
        prop::sample::select(plain.to_vec()).prop_map(|s| (s, false)),
        prop::sample::select(dotted.to_vec()).prop_map(|s| (s, true)),
    ]
}

/// A prefix that makes the target absolute-form or scheme-relative.
fn authority() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "",
        "http://h",
        "HTTPS://h:443",
        "wss://u@h",
        "foo://h",
        "//h",
        "/\\h",
        "\\\\h",
        "///h",
        "http:",
        "http:/",
    ])
}

/// What can follow a path under the route and still reach its handler
/// somewhere: where dot segments are resolved (`resolved` true), or where
/// they are routed literally (Express, Flask: `/webhooks/persona/..`).
fn tail(resolved: bool) -> impl Strategy<Value = &'static str> {
    let either = ["", "/", "/sub", ";p=1", "/x/..", "/.", "/sub/x/%2e%2e"];
    let literal = [
        "/..",
        "/%2e%2e",
        "/%2E.",
        "/..;x",
        "//..",
        "/../x",
        "/sub/../..",
    ];
    let mut choices = either.to_vec();
    if !resolved {
        choices.extend(literal);
    }
    prop::sample::select(choices)
}

/// What can end such a path: a format suffix (on the last segment only), a
/// query or a fragment, plain or encoded.
fn end() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", ".json", ".", "%2e", ".tar.gz", "?q=1", "#f", "%3Fq", "%23f", "?/..", "%2F",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Every respelling of a target under the route is read under it.
    #[test]
    fn prop_respellings_stay_under_the_route(
        prefix in authority(),
        (sep, tails) in separator().prop_flat_map(|(sep, dotted)| {
            (Just(sep), prop::collection::vec(tail(dotted), 0..3))
        }),
        how in (any::<u8>(), any::<u8>()),
        masks in (any::<u64>(), any::<u64>()),
        last in end(),
    ) {
        // A format suffix belongs on the route's own last segment.
        let suffix = last.starts_with('.') || last.starts_with("%2e");
        let last = if suffix && !tails.is_empty() { "" } else { last };
        let target = format!(
            "{prefix}/{}{sep}{}{}{last}",
            respell("webhooks", how.0, masks.0),
            respell("persona", how.1, masks.1),
            tails.concat()
        );
        prop_assert_eq!(covered(target.as_bytes()), Ok(true), "{}", target);
    }

    /// A suffix, a dot segment, parameters or an authority prefix added to a
    /// protected path never take it out of the route.
    #[test]
    fn prop_additions_never_leave(
        prefix in authority(),
        rest in prop::collection::vec("[a-z0-9._;%-]{0,6}", 0..4),
        more in tail(false),
        last in prop::sample::select(vec!["", "?q=1", "#f", "%3Fq", "%23f", "?/..", "%2F"]),
    ) {
        let target = format!("{prefix}/webhooks/persona/{}{more}{last}", rest.join("/"));
        if let Ok(c) = covered(target.as_bytes()) {
            prop_assert!(c, "{}", target);
        }
    }

    /// Paths whose segments never spell the route, encoded any way, stay out.
    #[test]
    fn prop_outside_paths_stay_out(
        segs in prop::collection::vec("[a-z0-9_-]{1,10}", 0..6),
        encode in any::<u64>(),
        prefix in prop::sample::select(vec!["", "http://h", "//h"]),
    ) {
        prop_assume!(!segs.iter().any(|s| s == "webhooks"));
        let plain: String = segs.iter().map(|s| format!("/{s}")).collect();
        let encoded: String = plain
            .bytes()
            .enumerate()
            .map(|(i, b)| match b {
                b'/' => "/".to_string(),
                _ if (encode >> (i % 64)) & 1 == 1 => format!("%{b:02X}"),
                _ => (b as char).to_string(),
            })
            .collect();
        let target = format!("{prefix}{encoded}");
        prop_assert_eq!(covered(target.as_bytes()), Ok(false), "{}", target);
    }

    /// Whatever an independent reader routes under the route is covered.
    #[test]
    fn prop_oracle_readings_are_covered(
        junk in prop::collection::vec("[/\\\\.%2eEfF5cC;?#:h]{0,5}", 3),
        case in any::<u64>(),
        prefix in authority(),
    ) {
        let target = format!(
            "{prefix}{}webhooks{}persona{}",
            junk[0], junk[1], junk[2]
        );
        let target: String = target
            .chars()
            .enumerate()
            .map(|(i, c)| if (case >> (i % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        let readers = oracles_route_under(target.as_bytes());
        // Covered, or refused outright (400): never passed through.
        if !readers.is_empty() {
            prop_assert_ne!(covered(target.as_bytes()), Ok(false), "{} (read under it by {:?})", target, readers);
        }
    }

    /// Any bytes: no panic, and the decision agrees with itself.
    #[test]
    fn prop_any_bytes(t in prop::collection::vec(any::<u8>(), 0..256)) {
        let a = covered(&t);
        prop_assert_eq!(a, covered(&t));
    }
}
