//! What the whole loader promises, across sections: documented defaults, every
//! problem reported under its key, no message quoting the file, every address
//! looked up once. Also the helpers the section files' tests share.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

pub(super) struct MapEnv(HashMap<&'static str, &'static str>);
impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|s| s.to_string())
    }
}

/// `[spool] key`s: [`SPOOL_KEY_BYTES`] in hex and in base64, another key, one too short.
pub(super) fn env() -> MapEnv {
    MapEnv(HashMap::from([
        ("SECRET", "wbhsec_abc"),
        (
            "SPOOL_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),
        (
            "SPOOL_KEY_B64",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        ),
        (
            "SPOOL_KEY_OTHER",
            "abababababababababababababababababababababababababababababababab",
        ),
        ("SPOOL_KEY_SHORT", "c2hvcnRrZXlfTEVBS0NBTkFSWQ=="),
        ("SECRET_44", "LEAKCANARY_LEAKCANARY_LEAKCANARY_LEAKCANARY!"),
        (
            "SECRET_64",
            "LEAKCANARYLEAKCANARYLEAKCANARYLEAKCANARYLEAKCANARYLEAKCANARYLEAK",
        ),
    ]))
}

/// The bytes `SPOOL_KEY` and `SPOOL_KEY_B64` decode to.
pub(super) const SPOOL_KEY_BYTES: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

pub(super) const MINIMAL: &str = r#"
[[route]]
path = "/webhooks/persona"
secrets = ["env:SECRET"]
"#;

pub(super) fn keys(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

/// A self-signed certificate for `localhost` and its key, as PEM files
/// `{name}.crt` and `{name}.key` in `dir`.
pub(super) fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = from_str(MINIMAL, &env()).unwrap();
    assert_eq!(c.policy.unmatched, Unmatched::Forward);
    assert_eq!(c.process.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.process.admin, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.policy.upstream.address, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.policy.upstream.read_timeout, Duration::from_secs(30));
    assert_eq!(c.policy.replay.ttl, Duration::from_secs(72 * 3600));
    assert_eq!(c.process.capacity, 300_000);
    assert_eq!(c.policy.replay.inflight_ttl, Duration::from_secs(60));
    let r = &c.policy.routes[0];
    assert_eq!(r.secrets, vec![Secret::new("wbhsec_abc")]);
    assert_eq!(r.tolerance, Duration::from_secs(300));
    assert_eq!(r.max_body, 1024 * 1024);
    assert_eq!(c.policy.headers[1].1.as_str(), "x-persona-event-id");
}

#[test]
fn units_are_parsed() {
    let text = r#"
[replay]
ttl = "1h"
[[route]]
path = "/a"
secrets = ["lit"]
tolerance = "90s"
max_body = "64KiB"
"#;
    let c = from_str(text, &env()).unwrap();
    assert_eq!(c.policy.replay.ttl, Duration::from_secs(3600));
    assert_eq!(c.policy.routes[0].tolerance, Duration::from_secs(90));
    assert_eq!(c.policy.routes[0].max_body, 64 * 1024);
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
unmatched = "maybe"
[upstream]
read_timeout = "soon"
[replay]
ttl = "5m"
[[route]]
path = "/a"
secrets = ["env:MISSING", "file:/nonexistent/secret"]
tolerance = "5m"
max_body = "lots"
events = ["inq*uiry"]
"#;
    let problems = from_str(text, &env()).unwrap_err();
    let k = keys(&problems);
    for expected in [
        "unmatched",
        "upstream.read_timeout",
        "replay.ttl",
        "route[0].secrets[0]",
        "route[0].secrets[1]",
        "route[0].max_body",
        "route[0].events[0]",
    ] {
        assert!(k.contains(&expected), "{expected} missing from {k:?}");
    }
    let ttl = problems.iter().find(|p| p.key == "replay.ttl").unwrap();
    assert!(ttl.message.contains("10m"), "{}", ttl.message);
    let missing = problems
        .iter()
        .find(|p| p.key == "route[0].secrets[0]")
        .unwrap();
    assert!(missing.message.contains("MISSING"));
}

#[test]
fn duplicate_route_paths_and_bad_headers_are_rejected() {
    let text = r#"
[headers]
event_id = "Content-Length"
[[route]]
path = "/a/"
secrets = ["x"]
[[route]]
path = "/A"
secrets = ["y"]
"#;
    let problems = from_str(text, &env()).unwrap_err();
    let k = keys(&problems);
    assert!(k.contains(&"route[1].path"), "{k:?}");
    assert!(k.contains(&"headers.event_id"), "{k:?}");
}

#[test]
fn most_specific_route_wins_and_patterns_match() {
    let text = r#"
[[route]]
path = "/hooks"
secrets = ["x"]
[[route]]
path = "/hooks/persona"
secrets = ["y"]
events = ["inquiry.*", "verification.passed"]
"#;
    let c = from_str(text, &env()).unwrap();
    let (i, r) = c.route_for_target(b"/hooks/persona/x").unwrap().unwrap();
    assert_eq!(i, 1);
    assert!(r.allows("inquiry.approved"));
    assert!(r.allows("verification.passed"));
    assert!(!r.allows("verification.failed"));
    assert_eq!(c.route_for_target(b"/hooks/other").unwrap().unwrap().0, 0);
    assert_eq!(
        c.route_for_target(b"http://h/HOOKS/x").unwrap().unwrap().0,
        0
    );
    assert!(c.route_for_target(b"/other").unwrap().is_none());
    // Read literally it is under /hooks/persona, resolved under /hooks:
    // the app could run either handler, so no route is chosen.
    for t in [&b"/hooks/persona/.."[..], b"/hooks/persona.json"] {
        assert_eq!(c.route_for_target(t).err(), Some(RouteError::Ambiguous));
    }
    assert_eq!(
        c.route_for_target(b"/hooks/%zz").err(),
        Some(RouteError::Path(path::PathError::BadEncoding))
    );
}

/// A secret written in the wrong place: distinctive, so any echo shows.
const CANARY: &str = "wbhsec_LEAKCANARY_q7Zr2xW9";

/// The first 6-character piece of [`CANARY`] found in `out`.
fn canary_piece_in(out: &str) -> Option<&'static str> {
    (0..=CANARY.len() - 6)
        .map(|i| &CANARY[i..i + 6])
        .find(|w| out.contains(w))
}

const CANARY_BASE: &str = r#"unmatched = "forward"

[listen]
address = "127.0.0.1:18080"

[admin]
address = "127.0.0.1:19090"

[upstream]
address = "127.0.0.1:13000"
connect_timeout = "2s"

[replay]
store = "memory"
ttl = "15m"
capacity = 1000

[headers]
event_type = "X-Persona-Event-Type"
event_id = "X-Persona-Event-Id"

[[route]]
path = "/webhooks/persona"
secrets = ["env:SECRET"]
tolerance = "5m"
max_body = "1MiB"
events = ["inquiry.*"]
"#;

/// (what, replace this line of the base, with this (`C` = the canary),
/// text the report must contain).
/// One case for each way a message is made (serde's type and variant
/// errors, unknown and duplicate keys, TOML syntax, our own validation).
/// Every wrong place we could think of runs through the real binary in
/// `tests/e2e/cli.rs`.
const CANARY_CASES: &[(&str, &str, &str, &[&str])] = &[
    (
        "secrets as a string",
        r#"secrets = ["env:SECRET"]"#,
        r#"secrets = "C""#,
        &[
            "route[0].secrets",
            "line 24",
            "expected a list, found a string",
        ],
    ),
    (
        "secrets env: name",
        r#"secrets = ["env:SECRET"]"#,
        r#"secrets = ["env:C"]"#,
        &["route[0].secrets[0]", "not set"],
    ),
    (
        "tolerance",
        r#"tolerance = "5m""#,
        r#"tolerance = "C""#,
        &["route[0].tolerance"],
    ),
    (
        "events pattern",
        r#"events = ["inquiry.*"]"#,
        r#"events = ["C*x"]"#,
        &["route[0].events[0]"],
    ),
    (
        "unmatched",
        r#"unmatched = "forward""#,
        r#"unmatched = "C""#,
        &["unmatched", "\"forward\", \"deny\""],
    ),
    (
        "redis_url password",
        r#"store = "memory""#,
        "store = \"redis\"\nredis_url = \"redis://:C@127.0.0.1:notaport/0\"",
        &["replay.redis_url"],
    ),
    (
        "admin token literal",
        r#"address = "127.0.0.1:19090""#,
        "address = \"127.0.0.1:19090\"\ntoken = \"C\"",
        &["admin.token", "`env:NAME` or `file:/path`"],
    ),
    (
        "admin token env: name",
        r#"address = "127.0.0.1:19090""#,
        "address = \"127.0.0.1:19090\"\ntoken = \"env:C\"",
        &["admin.token", "not set"],
    ),
    (
        "spool key literal",
        "capacity = 1000",
        "capacity = 1000\n[spool]\nkey = \"C\"",
        &["spool.key", "`env:NAME` or `file:/path`"],
    ),
    (
        "spool key env: name",
        "capacity = 1000",
        "capacity = 1000\n[spool]\nkey = \"env:C\"",
        &["spool.key", "not set"],
    ),
    (
        "header name",
        r#"event_id = "X-Persona-Event-Id""#,
        r#"event_id = "C: x""#,
        &["headers.event_id"],
    ),
    (
        "unknown key, quoted",
        r#"tolerance = "5m""#,
        r#""C with `ticks` and \"quotes\"" = 1"#,
        &["route[0]", "line 25"],
    ),
    (
        "duplicate key's name",
        r#"tolerance = "5m""#,
        "C = 1\nC = 2",
        &["(syntax)", "line 26"],
    ),
    (
        "unterminated string",
        r#"path = "/webhooks/persona""#,
        r#"path = "/C"#,
        &["(syntax)", "line 23"],
    ),
    (
        "invalid escape",
        r#"path = "/webhooks/persona""#,
        r#"path = "/C\q""#,
        &["(syntax)", "line 23"],
    ),
    (
        "unquoted value",
        r#"tolerance = "5m""#,
        "tolerance = C",
        &["(syntax)", "line 25"],
    ),
];

fn canary_case(what: &str, old: &str, new: &str) -> String {
    let new = new.replace('C', CANARY);
    let text = CANARY_BASE.replacen(old, &new, 1);
    assert_ne!(text, CANARY_BASE, "{what}: `{old}` not in the base file");
    text
}

#[test]
fn no_problem_quotes_a_secret_written_in_the_wrong_place() {
    assert!(from_str(CANARY_BASE, &env()).is_ok());
    for (what, old, new, expect) in CANARY_CASES {
        let text = canary_case(what, old, new);
        assert!(text.contains(CANARY), "{what}: the canary is in the file");
        let problems = from_str(&text, &env())
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted\n{text}"));
        let out = ConfigError {
            file: "routes.toml".into(),
            problems,
        }
        .to_string();
        if let Some(piece) = canary_piece_in(&out) {
            panic!("{what}: the report quotes `{piece}`:\n{out}");
        }
        for e in *expect {
            assert!(out.contains(e), "{what}: `{e}` missing from\n{out}");
        }
    }
}

/// An [`Env`] that counts the look-ups of each address (literal ones answer).
struct CountingEnv(RefCell<HashMap<String, usize>>);
impl Env for CountingEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn resolve(&self, addr: &str) -> Result<SocketAddr, String> {
        *self.0.borrow_mut().entry(addr.to_string()).or_default() += 1;
        match addr {
            "app.internal:3000" => Ok(SocketAddr::from(([10, 0, 0, 7], 3000))),
            _ => addr.parse().map_err(|_| "does not resolve".to_string()),
        }
    }
}

/// no DNS twice: each address is looked up once, at load, however many keys
/// name it; what runs later uses the [`SocketAddr`] kept in the config.
#[test]
fn each_address_is_resolved_once_per_load() {
    let text = r#"
[listen]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream]
address = "app.internal:3000"
[[route]]
path = "/a"
secrets = ["x"]
upstream = "http://app.internal:3000"
[[route]]
path = "/b"
secrets = ["x"]
upstream = "app.internal:3000"
[[route]]
path = "/c"
secrets = ["x"]
upstream = "nowhere.invalid:1"
[[route]]
path = "/d"
secrets = ["x"]
upstream = "nowhere.invalid:1"
"#;
    let env = CountingEnv(RefCell::default());
    let problems = from_str(text, &env).unwrap_err();
    assert_eq!(
        keys(&problems),
        vec!["route[2].upstream", "route[3].upstream"]
    );
    let counts = env.0.into_inner();
    assert_eq!(
        counts,
        HashMap::from([
            ("127.0.0.1:0".to_string(), 1),
            ("app.internal:3000".to_string(), 1),
            ("nowhere.invalid:1".to_string(), 1),
        ])
    );

    let env = CountingEnv(RefCell::default());
    let valid = text.split("[[route]]\npath = \"/c\"").next().unwrap();
    let c = from_str(valid, &env).unwrap();
    assert_eq!(
        c.policy.upstream.address,
        c.policy.routes[0].upstream.address
    );
    assert_eq!(c.policy.routes[1].upstream.address.port(), 3000);
    assert!(env.0.borrow().values().all(|n| *n == 1));
}

/// `docs/config-keys.md` is the schema's rendering ([`schema::markdown`]);
/// `BLESS=1 cargo test --lib config_keys_doc` writes it.
#[test]
fn config_keys_doc_is_the_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config-keys.md");
    let want = schema::markdown();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/config-keys.md is not the schema's rendering; regenerate it: BLESS=1 cargo test --lib config_keys_doc"
    );
}
