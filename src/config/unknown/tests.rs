use super::super::error::Problem;
use super::super::from_str;
use super::super::tests::{env, keys};
use super::{looks_like_secret, suggest};

/// Every unknown key of `text`; none when it is not TOML.
fn find(text: &str) -> Vec<Problem> {
    toml_edit::ImDocument::parse(text)
        .map_or_else(|_| Vec::new(), |d| super::find(text, d.as_table()))
}

const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";

#[test]
fn a_typo_is_named_with_its_line_and_the_closest_key() {
    let p = from_str(&format!("{ROUTE}tolerence = \"5m\"\n"), &env()).unwrap_err();
    assert_eq!(keys(&p), vec!["route[0]"]);
    assert_eq!(
        p[0].message,
        "unknown key `tolerence` (line 4); did you mean `tolerance`?"
    );
}

#[test]
fn every_typo_of_a_table_is_reported() {
    let text = format!("{ROUTE}tolerence = \"5m\"\nmax-bdy = \"1MiB\"\n");
    let p = from_str(&text, &env()).unwrap_err();
    assert_eq!(keys(&p), vec!["route[0]", "route[0]"]);
    assert!(p[0].message.contains("`tolerence` (line 4)"), "{p:?}");
    assert!(p[1].message.contains("`max-bdy` (line 5)"), "{p:?}");
    assert!(p[1].message.contains("did you mean `max_body`?"), "{p:?}");
}

#[test]
fn a_typo_in_a_section_name_is_named_with_the_section_meant() {
    let text = format!("[upsteam]\naddress = \"127.0.0.1:3000\"\n{ROUTE}");
    let p = from_str(&text, &env()).unwrap_err();
    assert_eq!(keys(&p), vec!["(top level)"]);
    assert_eq!(
        p[0].message,
        "unknown table `upsteam` (line 1); did you mean `upstream`?"
    );
}

#[test]
fn nested_tables_inline_tables_and_later_routes_are_walked() {
    let text =
        format!("[listen]\nadress = \"x\"\ntls = {{ cret = \"a\" }}\n{ROUTE}{ROUTE}evnets = []\n");
    let p = find(&text);
    assert_eq!(keys(&p), vec!["listen", "listen.tls", "route[1]"]);
    assert!(p[0].message.contains("`address`"), "{p:?}");
    assert!(p[1].message.contains("`cert`"), "{p:?}");
    assert!(
        p[2].message.contains("(line 10); did you mean `events`"),
        "{p:?}"
    );
}

#[test]
fn a_key_that_looks_like_a_secret_is_reported_by_its_line_alone() {
    let pasted = "wbhsec_Zq7Rr2xW9";
    let random = "Kq8ZpL3mX0vT7rW2yB5nD9cF4hJ6gS1aE0u1Xw2Q";
    assert_eq!(random.len(), 40);
    for key in [pasted, random] {
        let p = from_str(&format!("{ROUTE}{key} = 1\n"), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["route[0]"]);
        let m = &p[0].message;
        assert!(m.contains("(line 4)"), "{m}");
        assert!(m.contains("misplaced secret"), "{m}");
        assert!(!m.contains(&key[..8]) && !m.contains(&key[8..]), "{m}");
        assert!(!m.contains("did you mean"), "{m}");
    }
    // As a table, too.
    let p = find(&format!("{ROUTE}[upstream.{pasted}]\n"));
    assert_eq!(keys(&p), vec!["upstream"]);
    assert!(p[0].message.contains("(line 4)"), "{p:?}");
    assert!(!p[0].message.contains("Zq7R"), "{p:?}");
}

#[test]
fn secret_likeness() {
    for s in [
        "wbhsec_x",
        "WBHSEC_abc",
        "Kq8ZpL3mX0vT7rW2yB5nD9cF4hJ6gS1aE0u1Xw2Q",
        "0123456789abcdef0123456789abcdef",
        "dGhpcyBpcyBub3QgYSBzZWNyZXQ_aGVsbG8-d29ybGQ",
    ] {
        assert!(looks_like_secret(s), "{s}");
    }
    for s in [
        "tolerence",
        "max_buffered_per_client_bytes",
        "maximum-connections-per-peer2",
        "AbCdEfGh",
    ] {
        assert!(!looks_like_secret(s), "{s}");
    }
}

#[test]
fn a_suggestion_only_when_it_is_close() {
    let names = ["path", "secrets", "tolerance", "max_body", "events"];
    assert_eq!(suggest("tolerence", &names), Some("tolerance"));
    assert_eq!(suggest("Secret", &names), Some("secrets"));
    assert_eq!(suggest("max-body", &names), Some("max_body"));
    assert_eq!(suggest("colour", &names), None);
    let p = find(&format!("{ROUTE}colour = 1\n"));
    assert!(
        p[0].message
            .ends_with("unknown key `colour` (line 4); the keys allowed here are `path`, `secrets`, `tolerance`, `max_body`, `events`, `upstream`, `allow_from`, `kind`, `id_pointer`, `spool`, `require_headers`, `oauth`, `reconcile`"),
        "{p:?}"
    );
}

#[test]
fn a_name_that_is_not_a_bare_key_is_shown_escaped() {
    let p = find(&format!("{ROUTE}\"to\\u001blerance `x`\" = 1\n"));
    let m = &p[0].message;
    assert!(!m.contains('\u{1b}'), "{m}");
    assert!(m.contains(r#""to\u{1b}lerance `x`""#), "{m}");
}

#[test]
fn a_correct_file_and_a_syntax_error_give_none_here() {
    let full = format!(
        "unmatched = \"deny\"\nlisten.address = \"127.0.0.1:0\"\n[server]\nthreads = 2\n[upstream]\naddress = \"127.0.0.1:3000\"\n{ROUTE}tolerance = \"5m\"\nroute2 = 1\n"
    );
    assert_eq!(keys(&find(&full)), vec!["route[0]"]);
    let ok = full.replace("route2 = 1\n", "");
    assert!(find(&ok).is_empty());
    assert!(from_str(&ok, &env()).is_ok());
    assert!(find("[[route]\npath = 1").is_empty());
    let inline = "route = [{ path = \"/a\", secrets = [\"x\"], tolerence = \"1m\" }]\n";
    assert_eq!(keys(&find(inline)), vec!["route[0]"]);
}
