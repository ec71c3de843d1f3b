//! `docs/behaviour.md` § Configuration (Secrets and error messages): a secret written in the
//! wrong place is never printed, by `check`, by `run`, nor in the log of a refused reload.

use std::fs;
use std::process::Output;

use crate::cli::{both_streams, valid_config};
use crate::harness::*;

/// Stands for a webhook secret pasted in the wrong place: distinctive, so that
/// any echo of it, whole or in part, shows.
const CANARY: &str = "wbhsec_LEAKCANARY_e2e_K8vT3pQ";

/// The first 6-character piece of [`CANARY`] found in `out`.
fn canary_piece_in(out: &str) -> Option<&'static str> {
    (0..=CANARY.len() - 6)
        .map(|i| &CANARY[i..i + 6])
        .find(|w| out.contains(w))
}

/// (what, a line of [`valid_config`] to replace, its replacement with `{C}` for
/// the canary, what the report must name: the key path and/or the line).
/// Lines of the base file: 1 unmatched, 4 listen.address, 7 admin.address,
/// 10-12 [upstream], 15-17 [replay], 19-22 [headers], 24 [[route]], 25 path,
/// 26 secrets, 27 tolerance, 28 max_body, 29 events.
const MISPLACED: &[(&str, &str, &str, &[&str])] = &[
    (
        "secrets as a string",
        r#"secrets = ["literal-e2e-secret"]"#,
        r#"secrets = "{C}""#,
        &["route[0].secrets", "line 26"],
    ),
    (
        "secrets as a list mixed with numbers",
        r#"secrets = ["literal-e2e-secret"]"#,
        r#"secrets = ["{C}", 7, "x"]"#,
        &["route[0].secrets[1]", "line 26"],
    ),
    (
        "secrets number first",
        r#"secrets = ["literal-e2e-secret"]"#,
        r#"secrets = [7, "{C}"]"#,
        &["route[0].secrets[0]", "line 26"],
    ),
    (
        "secrets as a table",
        r#"secrets = ["literal-e2e-secret"]"#,
        r#"secrets = { {C} = 1 }"#,
        &["route[0].secrets", "line 26"],
    ),
    (
        "secrets after env:",
        r#"secrets = ["literal-e2e-secret"]"#,
        r#"secrets = ["env:{C}"]"#,
        &["route[0].secrets[0]"],
    ),
    (
        "secrets after file:",
        r#"secrets = ["literal-e2e-secret"]"#,
        r#"secrets = ["file:/nonexistent/{C}"]"#,
        &["route[0].secrets[0]"],
    ),
    (
        "path",
        r#"path = "/webhooks/persona""#,
        r#"path = "{C}""#,
        &["route[0].path"],
    ),
    (
        "path with bad percent-encoding",
        r#"path = "/webhooks/persona""#,
        r#"path = "/{C}%zz""#,
        &["route[0].path"],
    ),
    (
        "path as a list",
        r#"path = "/webhooks/persona""#,
        r#"path = ["/{C}"]"#,
        &["route[0].path", "line 25"],
    ),
    (
        "tolerance",
        r#"tolerance = "5m""#,
        r#"tolerance = "{C}""#,
        &["route[0].tolerance"],
    ),
    (
        "tolerance with an unknown unit",
        r#"tolerance = "5m""#,
        r#"tolerance = "5{C}""#,
        &["route[0].tolerance"],
    ),
    (
        "tolerance as a number",
        r#"tolerance = "5m""#,
        r#"tolerance = ["{C}", 5]"#,
        &["route[0].tolerance", "line 27"],
    ),
    (
        "max_body",
        r#"max_body = "1MiB""#,
        r#"max_body = "{C}""#,
        &["route[0].max_body"],
    ),
    (
        "max_body with an unknown unit",
        r#"max_body = "1MiB""#,
        r#"max_body = "1 {C}""#,
        &["route[0].max_body"],
    ),
    (
        "events pattern",
        r#"events = ["inquiry.*", "verification.passed"]"#,
        r#"events = ["{C}*.x"]"#,
        &["route[0].events[0]"],
    ),
    (
        "events mixed with a boolean",
        r#"events = ["inquiry.*", "verification.passed"]"#,
        r#"events = ["{C}", false]"#,
        &["route[0].events[1]", "line 29"],
    ),
    (
        "route upstream",
        r#"events = ["inquiry.*", "verification.passed"]"#,
        r#"upstream = "{C}""#,
        &["route[0].upstream"],
    ),
    (
        "route upstream with a scheme",
        r#"events = ["inquiry.*", "verification.passed"]"#,
        r#"upstream = "https://{C}.invalid:x""#,
        &["route[0].upstream"],
    ),
    (
        "unmatched",
        r#"unmatched = "forward""#,
        r#"unmatched = "{C}""#,
        &["unmatched"],
    ),
    (
        "log_format",
        r#"unmatched = "forward""#,
        r#"log_format = "{C}""#,
        &["log_format"],
    ),
    (
        "store",
        r#"store = "memory""#,
        r#"store = "{C}""#,
        &["replay.store"],
    ),
    (
        "on_store_error",
        r#"store = "memory""#,
        "store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\non_store_error = \"{C}\"",
        &["replay.on_store_error"],
    ),
    (
        "capacity as a string",
        "capacity = 1_000_000",
        r#"capacity = "{C}""#,
        &["replay.capacity", "line 17"],
    ),
    ("ttl", r#"ttl = "15m""#, r#"ttl = "{C}""#, &["replay.ttl"]),
    (
        "listen address",
        r#"address = "127.0.0.1:18080""#,
        r#"address = "{C}""#,
        &["listen.address"],
    ),
    (
        "admin address with a port",
        r#"address = "127.0.0.1:19090""#,
        r#"address = "{C}:9090""#,
        &["admin.address"],
    ),
    (
        "upstream address",
        r#"address = "127.0.0.1:13000""#,
        r#"address = "http://127.0.0.1:{C}""#,
        &["upstream.address"],
    ),
    (
        "redis_url holding the secret as its password",
        r#"store = "memory""#,
        "store = \"redis\"\nredis_url = \"redis://:{C}@127.0.0.1:port/0\"",
        &["replay.redis_url"],
    ),
    (
        "redis_url as garbage",
        r#"store = "memory""#,
        "store = \"redis\"\nredis_url = \"{C}\"",
        &["replay.redis_url"],
    ),
    (
        "redis_url with the wrong scheme",
        r#"store = "memory""#,
        "store = \"redis\"\nredis_url = \"http://:{C}@127.0.0.1/0\"",
        &["replay.redis_url"],
    ),
    (
        "redis_url on the memory store",
        r#"store = "memory""#,
        "store = \"memory\"\nredis_url = \"redis://:{C}@127.0.0.1/0\"",
        &["replay.redis_url"],
    ),
    (
        "redis_password after env:",
        r#"store = "memory""#,
        "store = \"redis\"\nredis_url = \"redis://127.0.0.1/0\"\nredis_password = \"env:{C}\"",
        &["replay.redis_password"],
    ),
    (
        "key_prefix on the memory store",
        r#"store = "memory""#,
        "store = \"memory\"\nkey_prefix = \"{C}\"",
        &["replay.key_prefix"],
    ),
    (
        "header name",
        r#"event_id = "X-Persona-Event-Id""#,
        r#"event_id = "{C}: x""#,
        &["headers.event_id"],
    ),
    (
        "header name as a list",
        r#"event_id = "X-Persona-Event-Id""#,
        r#"event_id = ["{C}"]"#,
        &["headers.event_id", "line 21"],
    ),
    (
        "upstream ca_file",
        r#"read_timeout = "30s""#,
        "read_timeout = \"30s\"\nca_file = \"/nonexistent/{C}.pem\"",
        &["upstream.ca_file"],
    ),
    (
        "listen TLS paths",
        r#"address = "127.0.0.1:18080""#,
        "address = \"127.0.0.1:18080\"\ntls = { cert = \"/nonexistent/{C}.pem\", key = \"/nonexistent/{C}.key\" }",
        &["listen.tls.cert", "listen.tls.key"],
    ),
    (
        "upstream tls flag",
        r#"read_timeout = "30s""#,
        "read_timeout = \"30s\"\ntls = \"{C}\"",
        &["upstream.tls", "line 13"],
    ),
    (
        "server threads",
        r#"unmatched = "forward""#,
        "unmatched = \"forward\"\n[server]\nthreads = \"{C}\"",
        &["server.threads", "line 3"],
    ),
    (
        "an unknown key, bare",
        r#"tolerance = "5m""#,
        "{C} = \"5m\"",
        &["route[0]", "line 27", "`tolerance`"],
    ),
    (
        "an unknown key, quoted",
        r#"tolerance = "5m""#,
        r#""{C} with `ticks` and \"quotes\"" = 1"#,
        &["route[0]", "line 27"],
    ),
    (
        "an unknown key, literal-quoted",
        r#"tolerance = "5m""#,
        "'{C}' = 1",
        &["route[0]", "line 27"],
    ),
    (
        "an unknown key, dotted",
        r#"address = "127.0.0.1:18080""#,
        "{C}.x = 1",
        &["listen", "line 4", "`address`"],
    ),
    (
        "an unknown top-level key",
        r#"unmatched = "forward""#,
        r#"{C} = "forward""#,
        &["(top level)", "line 1", "`route`"],
    ),
    (
        "an unknown key in an inline table",
        r#"address = "127.0.0.1:18080""#,
        "address = \"127.0.0.1:18080\"\ntls = { {C} = \"x\" }",
        &["listen.tls", "line 5"],
    ),
    (
        "an unknown table",
        "[headers]",
        "[{C}]\nx = 1\n[headers]",
        &["(top level)", "line 19"],
    ),
    (
        "an unknown array of tables",
        "[headers]",
        "[[{C}]]\n[headers]",
        &["(top level)", "line 19"],
    ),
    (
        "an unknown sub-table",
        "[headers]",
        "[upstream.{C}]\n[headers]",
        &["upstream", "line 19"],
    ),
    (
        "a duplicate key's value",
        r#"tolerance = "5m""#,
        "tolerance = \"5m\"\ntolerance = \"{C}\"",
        &["(syntax)", "line 28"],
    ),
    (
        "a duplicate key's name",
        r#"tolerance = "5m""#,
        "{C} = 1\n{C} = 2",
        &["(syntax)", "line 28"],
    ),
    (
        "a duplicate table",
        "[headers]",
        "[{C}]\n[{C}]\n[headers]",
        &["(syntax)", "line 20"],
    ),
    (
        "an unterminated string",
        r#"path = "/webhooks/persona""#,
        r#"path = "/{C}"#,
        &["(syntax)", "line 25"],
    ),
    (
        "an unterminated string before more lines",
        r#"tolerance = "5m""#,
        "tolerance = \"{C}\nmax_body2 = \"x\"",
        &["(syntax)", "line 27"],
    ),
    (
        "an unterminated multi-line string",
        r#"max_body = "1MiB""#,
        r#"max_body = """{C}"#,
        &["(syntax)"],
    ),
    (
        "an unterminated literal string",
        r#"path = "/webhooks/persona""#,
        "path = '{C}",
        &["(syntax)", "line 25"],
    ),
    (
        "an invalid escape",
        r#"path = "/webhooks/persona""#,
        r#"path = "/{C}\q""#,
        &["(syntax)", "line 25"],
    ),
    (
        "an invalid unicode escape",
        r#"path = "/webhooks/persona""#,
        r#"path = "/{C}\uZZ""#,
        &["(syntax)", "line 25"],
    ),
    (
        "a control character in a string",
        r#"path = "/webhooks/persona""#,
        "path = \"/{C}\u{7}\"",
        &["(syntax)", "line 25"],
    ),
    (
        "unquoted in the secrets list",
        r#"secrets = ["literal-e2e-secret"]"#,
        "secrets = [{C}]",
        &["(syntax)", "line 26"],
    ),
    (
        "unquoted value",
        r#"tolerance = "5m""#,
        "tolerance = {C}",
        &["(syntax)", "line 27"],
    ),
    (
        "a key without a value",
        r#"tolerance = "5m""#,
        "{C}",
        &["(syntax)", "line 27"],
    ),
    (
        "glued to a number",
        "capacity = 1_000_000",
        "capacity = 1_000_000{C}",
        &["(syntax)", "line 17"],
    ),
    (
        "in a table header",
        "[[route]]",
        "[[route {C}]]",
        &["(syntax)", "line 24"],
    ),
    (
        "a secret pasted on its own line",
        r#"tolerance = "5m""#,
        "tolerance = \"5m\"\n\"{C}\"",
        &["(syntax)", "line 28"],
    ),
];

fn misplaced_file(what: &str, old: &str, new: &str) -> String {
    let base = valid_config("literal-e2e-secret");
    let text = base.replacen(old, &new.replace("{C}", CANARY), 1);
    assert_ne!(text, base, "{what}: `{old}` is not in the base file");
    assert!(text.contains(CANARY), "{what}: the canary is in the file");
    text
}

fn assert_reported_without_the_canary(what: &str, out: &Output, expect: &[&str]) {
    let text = both_streams(out);
    assert!(
        !out.status.success(),
        "{what}: an invalid file was accepted:\n{text}"
    );
    assert_eq!(out.status.code(), Some(64), "{what}: exit code\n{text}");
    if let Some(piece) = canary_piece_in(&text) {
        panic!("{what}: the output quotes `{piece}` from the misplaced secret:\n{text}");
    }
    for e in expect {
        assert!(
            text.contains(e),
            "{what}: `{e}` missing from the output:\n{text}"
        );
    }
}

#[test]
fn check_never_prints_a_secret_written_in_the_wrong_place() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("base.toml");
    fs::write(&ok, valid_config("literal-e2e-secret")).unwrap();
    let out = run_cli(&["check", "--config", ok.to_str().unwrap()], &[], None);
    assert!(
        out.status.success(),
        "the base file is valid: {}",
        both_streams(&out)
    );

    for (i, (what, old, new, expect)) in MISPLACED.iter().enumerate() {
        let path = dir.path().join(format!("case-{i}.toml"));
        fs::write(&path, misplaced_file(what, old, new)).unwrap();
        let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
        assert_reported_without_the_canary(what, &out, expect);
    }

    // Not UTF-8 at all: the file cannot be read as text.
    let path = dir.path().join("binary.toml");
    let mut bytes = valid_config(CANARY).into_bytes();
    bytes.extend_from_slice(b"\nx = \"\xff\xfe\"\n");
    fs::write(&path, bytes).unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
    assert_reported_without_the_canary("a file that is not UTF-8", &out, &["(file)"]);
}

#[test]
fn run_never_prints_a_secret_written_in_the_wrong_place() {
    let dir = tempfile::tempdir().unwrap();
    // A sample of each kind: a type error, validation, an unknown key, syntax.
    for what in [
        "secrets as a string",
        "redis_url holding the secret as its password",
        "an unknown key, bare",
        "an unterminated string",
    ] {
        let (_, old, new, expect) = MISPLACED.iter().find(|c| c.0 == what).unwrap();
        let path = dir.path().join("run.toml");
        fs::write(&path, misplaced_file(what, old, new)).unwrap();
        let out = run_cli(&["run", "--config", path.to_str().unwrap()], &[], None);
        assert_reported_without_the_canary(what, &out, expect);
        assert!(
            both_streams(&out).contains("invalid configuration"),
            "{what}: {}",
            both_streams(&out)
        );
    }
}

#[test]
fn a_refused_reload_never_logs_a_secret_written_in_the_wrong_place() {
    let (up, p) = rig();
    let original = fs::read_to_string(&p.config).unwrap();
    let secrets_line = "secrets = [\"env:PERSONA_WEBHOOK_SECRET\"]";
    assert!(original.contains(secrets_line), "{original}");
    let err_series = "persona_guard_config_reloads_total{result=\"error\"}";

    let cases: [(&str, String, &[&str]); 4] = [
        (
            "secrets as a string",
            original.replace(secrets_line, &format!("secrets = \"{CANARY}\"")),
            &["route[0].secrets", "line "],
        ),
        (
            "a misplaced secret as an unknown key",
            original.replace(secrets_line, &format!("{secrets_line}\n{CANARY} = 1")),
            &["route[0]", "line "],
        ),
        (
            "redis_url holding the secret",
            original.replace(
                "store = \"memory\"",
                &format!("store = \"redis\"\nredis_url = \"redis://:{CANARY}@127.0.0.1:port/0\""),
            ),
            &["replay.redis_url"],
        ),
        (
            "an unterminated string",
            original.replace(secrets_line, &format!("secrets = [\"{CANARY}]")),
            &["(syntax)", "line "],
        ),
    ];
    for (n, (what, text, expect)) in cases.iter().enumerate() {
        assert!(text.contains(CANARY), "{what}: the canary is in the file");
        fs::write(&p.config, text).unwrap();
        p.signal("HUP");
        let refused = n + 1;
        assert!(
            wait_until(W, || p.metric_or_zero(err_series) == refused as f64
                && p.logs().matches("reload refused").count() == refused),
            "{what}: no refused reload logged:\n{}",
            p.logs()
        );
        let logs = p.logs();
        let line = logs
            .lines()
            .filter(|l| l.contains("reload refused"))
            .nth(n)
            .unwrap()
            .to_string();
        // The problems follow the "reload refused" line in the same event.
        let event = logs
            .split_once(line.as_str())
            .map(|(_, rest)| format!("{line}{rest}"))
            .unwrap();
        for e in *expect {
            assert!(
                event.contains(e),
                "{what}: `{e}` missing from the log:\n{event}"
            );
        }
        if let Some(piece) = canary_piece_in(&logs) {
            panic!("{what}: the log quotes `{piece}` from the misplaced secret:\n{logs}");
        }
    }

    // The running configuration still serves.
    let r = p.deliver(&event_body(&event_id(), "inquiry.approved"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_for_requests(1, W).len(), 1);
}
