//! `[[route]]`: a path, its secrets, tolerance, body limit, event allow-list,
//! sources, kind, spooling and upstream.

use super::check::Check;
use super::server;
use super::{EventPattern, Route, RouteKind, Secret, SpoolMode, Upstream, upstream};
use crate::path;
use crate::source::AllowList;

/// Every route, in file order; at least one is required and no two may have
/// the same normalised path.
pub(super) fn compile(c: &mut Check, default: &Upstream) -> Vec<Route> {
    let n = c.doc().routes;
    if n == 0 {
        c.problem(
            "route",
            "no [[route]] is configured; add one with path and secrets",
        );
    }
    let mut routes: Vec<Route> = Vec::with_capacity(n);
    for i in 0..n {
        let route = compile_one(c, i, default, &routes);
        routes.push(route);
    }
    routes
}

/// Route `i`, each key read by its path (`route[i].name`); `earlier` are
/// the routes before it, whose paths it must not repeat.
fn compile_one(c: &mut Check, i: usize, default: &Upstream, earlier: &[Route]) -> Route {
    let d = c.doc();
    let k = |field: &str| format!("route[{i}].{field}");
    let (path, normalized) = route_path(c, &k("path"), d.str(&k("path")));
    if let Some(j) = earlier.iter().position(|o| o.normalized == normalized)
        && d.has(&k("path"))
    {
        c.problem_with(
            k("path"),
            format!("the same path as route[{j}]; merge the two routes"),
        );
    }
    let secrets = secrets(c, i, d.list(&k("secrets")));
    let tolerance = c.duration(&k("tolerance"));
    let max_body = c.size(&k("max_body"));
    let kind = kind(c, i, d.str(&k("kind")), d.str(&k("id_pointer")));
    let events = d.list(&k("events"));
    if kind != RouteKind::Event && events.is_some() {
        c.problem(
            k("events"),
            "does not apply to kind = \"signature\" (its bodies are not events); remove it",
        );
    }
    let events = events.map(|list| self::events(c, i, list));
    let allow_from = d.list(&k("allow_from")).map(|list| allow_from(c, i, list));
    let spool = [SpoolMode::Off, SpoolMode::OnFailure, SpoolMode::Always];
    let spool = c.choice(&k("spool"), spool);
    let upstream = match d.str(&k("upstream")) {
        None => default.clone(),
        Some(v) => upstream::for_route(c, &k("upstream"), v, default),
    };
    let require_headers = super::auth::require_headers(c, i);
    let oauth = super::auth::oauth(c, i);
    // Read quietly: a bad replay.ttl is reported by [replay] once.
    let ttl = c
        .text("replay.ttl")
        .and_then(|v| super::check::parse_duration(v).ok())
        .unwrap_or(std::time::Duration::MAX);
    let reconcile = super::reconcile::reconcile(c, i, ttl);
    Route {
        reconcile,
        require_headers,
        oauth,
        path,
        matcher: path::RoutePath::new(&normalized),
        normalized,
        secrets,
        tolerance,
        max_body,
        events,
        upstream,
        allow_from,
        kind,
        spool,
    }
}

/// `allow_from`: addresses, CIDRs and `"persona"`; never empty.
fn allow_from(c: &mut Check, i: usize, list: &[String]) -> AllowList {
    let key = format!("route[{i}].allow_from");
    if list.is_empty() {
        c.problem(
            key.as_str(),
            "an empty list would refuse every request; remove the key to accept any source",
        );
    }
    AllowList::new(server::cidrs(c, &key, list, true))
}

/// `kind` and `id_pointer`: `id_pointer` only on signature routes, and a
/// JSON pointer (RFC 6901) into the body: `/` then segments, `~` only as
/// `~0` or `~1`.
fn kind(c: &mut Check, i: usize, kind: Option<&str>, id_pointer: Option<&str>) -> RouteKind {
    let signature = c.choice(&format!("route[{i}].kind"), [false, true]);
    let key = format!("route[{i}].id_pointer");
    match (signature, id_pointer) {
        (false, None) => RouteKind::Event,
        (false, Some(_)) => {
            if kind.is_none_or(|k| k == "event") {
                c.problem(
                    key,
                    "only applies to kind = \"signature\"; add that or remove id_pointer",
                );
            }
            RouteKind::Event
        }
        (true, None) => RouteKind::Signature { id_pointer: None },
        (true, Some(p)) => {
            if !valid_pointer(p) {
                c.problem(
                    key,
                    "is not a JSON pointer to a field, such as \"/inquiry/id\" (RFC 6901: starts with `/`, `~` only as `~0` or `~1`; the value is not repeated here)",
                );
            }
            RouteKind::Signature {
                id_pointer: Some(p.to_string()),
            }
        }
    }
}

fn valid_pointer(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let b = rest.as_bytes();
    b.iter()
        .enumerate()
        .all(|(j, &c)| c != b'~' || matches!(b.get(j + 1), Some(b'0' | b'1')))
}

/// The path as written and its normalised form (`/` when it has a problem).
fn route_path(c: &mut Check, key: &str, value: Option<&str>) -> (String, Vec<u8>) {
    match value {
        None => {
            c.problem(key, "is required, e.g. \"/webhooks/persona\"");
            (String::new(), b"/".to_vec())
        }
        Some(p) if let Some(why) = invisible(p) => {
            c.problem_with(key, why);
            (p.to_string(), b"/".to_vec())
        }
        Some(p) if !p.starts_with('/') => {
            c.problem(key, "must start with `/` (the value is not repeated here)");
            (p.to_string(), b"/".to_vec())
        }
        Some(p) => match path::normalize(p.as_bytes()) {
            Ok(n) => (p.to_string(), n),
            Err(_) => {
                c.problem(
                    key,
                    "is not a valid path: invalid percent-encoding or a NUL byte (the value is not repeated here)",
                );
                (p.to_string(), b"/".to_vec())
            }
        },
    }
}

/// What makes a route path other than visible ASCII (`!` to `~`): the first
/// such character by its code point and position, never the value itself
/// (white space, a control or a zero-width character cannot be seen in it).
/// Such a path would leave the intended one unprotected.
fn invisible(p: &str) -> Option<String> {
    let (at, ch) = p
        .chars()
        .enumerate()
        .find(|(_, ch)| !ch.is_ascii_graphic())?;
    let what = match ch {
        ' ' => "a space",
        '\t' => "a tab",
        '\n' | '\r' => "a line break",
        c if c.is_control() => "a control character",
        c if c.is_whitespace() => "white space",
        _ => "a character outside ASCII",
    };
    Some(format!(
        "must be visible ASCII only: character {} is U+{:04X} ({what}); the value is not repeated here",
        at + 1,
        u32::from(ch)
    ))
}

fn secrets(c: &mut Check, i: usize, list: Option<&[String]>) -> Vec<Secret> {
    let key = format!("route[{i}].secrets");
    match list {
        None => {
            c.problem(
                key,
                "is required: a list such as [\"env:PERSONA_WEBHOOK_SECRET\"]",
            );
            Vec::new()
        }
        Some([]) => {
            c.problem(key, "must list at least one secret");
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(j, spec)| c.secret(format!("{key}[{j}]"), spec))
            .collect(),
    }
}

fn events(c: &mut Check, i: usize, list: &[String]) -> Vec<EventPattern> {
    if list.is_empty() {
        c.problem(
            format!("route[{i}].events"),
            "an empty list would ignore every event; remove the key to allow all",
        );
    }
    list.iter()
        .enumerate()
        .filter_map(|(j, e)| match parse_pattern(e) {
            Ok(p) => Some(p),
            Err(msg) => {
                c.problem(format!("route[{i}].events[{j}]"), msg);
                None
            }
        })
        .collect()
}

fn parse_pattern(e: &str) -> Result<EventPattern, &'static str> {
    if e.is_empty() {
        return Err("an event name cannot be empty");
    }
    match e.find('*') {
        None => Ok(EventPattern::Exact(e.to_string())),
        Some(pos) if pos == e.len() - 1 => Ok(EventPattern::Prefix(e[..pos].to_string())),
        Some(_) => Err(
            "`*` is only allowed at the end, as in \"inquiry.*\" (the value is not repeated here)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys};
    use super::*;

    #[test]
    fn no_route_is_an_error() {
        let problems = from_str("", &env()).unwrap_err();
        assert_eq!(keys(&problems), vec!["route"]);
    }

    #[test]
    fn route_fields_are_checked_each_under_its_key() {
        let text = r#"
[[route]]
path = "/a"
secrets = []
events = []
[[route]]
path = "hooks"
events = ["", "a*b", "inquiry.*"]
[[route]]
secrets = ["env:SECRET"]
"#;
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(
            keys(&p),
            vec![
                "route[0].secrets",
                "route[0].events",
                "route[1].path",
                "route[1].secrets",
                "route[1].events[0]",
                "route[1].events[1]",
                "route[2].path",
            ]
        );
    }

    #[test]
    fn allow_from_and_trusted_proxies_are_checked_without_quoting() {
        let text = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "persona", "10.0.0.1/8"]
[[route]]
path = "/a"
secrets = ["x"]
allow_from = ["persona", "203.0.113.0/24", "wbhsec_pasted", "2001:db8::/129"]
[[route]]
path = "/b"
secrets = ["x"]
allow_from = []
"#;
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(
            keys(&p),
            vec![
                "server.trusted_proxies[1]",
                "server.trusted_proxies[2]",
                "route[0].allow_from[2]",
                "route[0].allow_from[3]",
                "route[1].allow_from",
            ]
        );
        let all = format!("{p:?}");
        assert!(!all.contains("wbhsec_pasted") && !all.contains("10.0.0.1/8"));
        assert!(p[2].message.contains("\"persona\""));

        let ok = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "::1"]
[[route]]
path = "/a"
secrets = ["x"]
allow_from = ["persona", "127.0.0.1", "2001:db8::/32"]
[[route]]
path = "/b"
secrets = ["x"]
"#;
        let c = from_str(ok, &env()).unwrap();
        assert_eq!(c.policy.trusted_proxies.len(), 2);
        let allow = c.policy.routes[0].allow_from.as_ref().unwrap();
        assert_eq!(allow.len(), crate::source::persona().len() + 2);
        assert!(allow.contains("127.0.0.1".parse().unwrap()));
        assert!(c.policy.routes[1].allow_from.is_none());
    }

    #[test]
    fn route_paths_are_visible_ascii_only() {
        for (bad, at, code) in [
            ("/webhooks/persona ", 18, "U+0020"),
            ("/webhooks/persona\n", 18, "U+000A"),
            ("/webhooks/\tpersona", 11, "U+0009"),
            ("/webhooks/persona\u{200b}", 18, "U+200B"),
            ("/webhooks/\u{a0}persona", 11, "U+00A0"),
            (" /webhooks/persona", 1, "U+0020"),
            ("/webhooks/persona\u{7f}", 18, "U+007F"),
        ] {
            let path = toml::Value::String(bad.into());
            let text = format!("[[route]]\npath = {path}\nsecrets = [\"x\"]\n");
            let p = from_str(&text, &env()).unwrap_err();
            assert_eq!(keys(&p), vec!["route[0].path"], "{bad:?}");
            let m = &p[0].message;
            assert!(
                m.contains(code) && m.contains(&format!("character {at} ")),
                "{m}"
            );
            assert!(!m.contains("webhooks"), "{m}");
        }
        let ok = "[[route]]\npath = \"/webhooks/persona.v2~x\"\nsecrets = [\"x\"]\n";
        assert!(from_str(ok, &env()).is_ok());
    }

    #[test]
    fn patterns_are_exact_or_a_trailing_star() {
        assert_eq!(
            parse_pattern("inquiry.*"),
            Ok(EventPattern::Prefix("inquiry.".into()))
        );
        assert_eq!(parse_pattern("a"), Ok(EventPattern::Exact("a".into())));
        assert!(parse_pattern("*a").is_err());
    }

    #[test]
    fn signature_routes_are_checked_each_under_its_key() {
        let text = r#"
[[route]]
path = "/a"
secrets = ["env:SECRET"]
kind = "signature"
events = ["inquiry.*"]
id_pointer = "nested/key"
[[route]]
path = "/b"
secrets = ["env:SECRET"]
id_pointer = "/inquiry/id"
[[route]]
path = "/c"
secrets = ["env:SECRET"]
kind = "workflow"
[[route]]
path = "/d"
secrets = ["env:SECRET"]
kind = "signature"
id_pointer = "/a~2b"
"#;
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(
            keys(&p),
            vec![
                "route[0].id_pointer",
                "route[0].events",
                "route[1].id_pointer",
                "route[2].kind",
                "route[3].id_pointer",
            ]
        );
        // The values are never quoted.
        let text = format!("{p:?}");
        assert!(
            !text.contains("nested/key") && !text.contains("workflow") && !text.contains("a~2b"),
            "{text}"
        );
    }

    #[test]
    fn signature_routes_compile() {
        let text = r#"
[[route]]
path = "/a"
secrets = ["env:SECRET"]
kind = "signature"
[[route]]
path = "/b"
secrets = ["env:SECRET"]
kind = "signature"
id_pointer = "/inquiry/id~1x"
[[route]]
path = "/c"
secrets = ["env:SECRET"]
kind = "event"
"#;
        let cfg = from_str(text, &env()).unwrap();
        assert_eq!(
            cfg.policy.routes[0].kind,
            RouteKind::Signature { id_pointer: None }
        );
        assert_eq!(
            cfg.policy.routes[1].kind,
            RouteKind::Signature {
                id_pointer: Some("/inquiry/id~1x".into())
            }
        );
        assert_eq!(cfg.policy.routes[2].kind, RouteKind::Event);
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        for ok in ["/a", "/", "/a/0", "/a~0b", "/a~1b"] {
            assert!(valid_pointer(ok), "{ok}");
        }
        for bad in ["", "a", "/a~", "/a~2"] {
            assert!(!valid_pointer(bad), "{bad}");
        }
    }
}
