//! `docs/behaviour.md` § Command line: `check` and `sign`; § Configuration: configuration errors never quote the file.

use std::fs;
use std::process::Output;

use crate::harness::*;

fn valid_config(secret_ref: &str) -> String {
    format!(
        r#"unmatched = "forward"

[listen]
address = "127.0.0.1:18080"

[admin]
address = "127.0.0.1:19090"

[upstream]
address = "127.0.0.1:13000"
connect_timeout = "2s"
read_timeout = "30s"

[replay]
store = "memory"
ttl = "15m"
capacity = 1_000_000

[headers]
event_type = "X-Persona-Event-Type"
event_id = "X-Persona-Event-Id"
event_created_at = "X-Persona-Event-Created-At"

[[route]]
path = "/webhooks/persona"
secrets = ["{secret_ref}"]
tolerance = "5m"
max_body = "1MiB"
events = ["inquiry.*", "verification.passed"]
"#
    )
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    fs::write(&path, valid_config("env:PG_E2E_CHECK_SECRET")).unwrap();
    let out = run_cli(
        &["check", "--config", path.to_str().unwrap()],
        &[("PG_E2E_CHECK_SECRET", &secret())],
        None,
    );
    assert!(
        out.status.success(),
        "check on a valid file: {:?}\nstdout {}\nstderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // file: secrets resolve too (trailing newline trimmed).
    let secret_file = dir.path().join("secret.txt");
    fs::write(&secret_file, format!("{}\n", secret())).unwrap();
    let path2 = dir.path().join("ok-file.toml");
    fs::write(
        &path2,
        valid_config(&format!("file:{}", secret_file.display())),
    )
    .unwrap();
    let out = run_cli(&["check", "--config", path2.to_str().unwrap()], &[], None);
    assert!(
        out.status.success(),
        "check with a file: secret: stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A replay window shorter than Persona's retries (~51.3 h) is valid (exit 0)
/// but `check` warns, naming `replay.ttl`; the default 72 h gives no warning.
#[test]
fn check_warns_when_replay_ttl_is_shorter_than_persona_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.toml");
    let env = [("PG_E2E_CHECK_SECRET", secret())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    fs::write(&path, valid_config("env:PG_E2E_CHECK_SECRET")).unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &env, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: replay.ttl: 15m is shorter"),
        "{stderr}"
    );

    let default_ttl = valid_config("env:PG_E2E_CHECK_SECRET").replace("ttl = \"15m\"\n", "");
    fs::write(&path, default_ttl).unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &env, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn check_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken-routes.toml");
    let text = r#"
[listen]
address = "127.0.0.1:18080"

[admin]
address = "127.0.0.1:19090"

[upstream]
address = "127.0.0.1:13000"

[replay]
store = "memory"
ttl = "15m"

[[route]]
path = "/webhooks/persona"
secrets = ["env:PG_E2E_SURELY_UNSET_VARIABLE_1"]
tolerance = "banana"
max_body = "1MiB"

[[route]]
path = "/webhooks/other"
secrets = ["literal-secret-for-route-1"]
tolerance = "10m"
max_body = "lots"
"#;
    fs::write(&path, text).unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "invalid file accepted; stderr {stderr}"
    );
    assert_eq!(out.status.code(), Some(64), "exit code; stderr {stderr}");
    assert!(
        stderr.contains(path.to_str().unwrap()) || stderr.contains("broken-routes.toml"),
        "stderr should name the file: {stderr}"
    );
    for key in [
        "route[0].tolerance",
        "route[0].secrets[0]",
        "route[1].max_body",
        "replay.ttl",
    ] {
        assert!(stderr.contains(key), "stderr should name {key}: {stderr}");
    }
    assert!(
        !stderr.contains("literal-secret-for-route-1"),
        "check must not print secrets: {stderr}"
    );
}

#[test]
fn check_rejects_unknown_keys_and_short_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unknown.toml");
    let text = valid_config("literal-e2e-secret").replace(
        "read_timeout = \"30s\"",
        "read_timeout = \"30s\"\nretries_bogus_key = 3",
    );
    fs::write(&path, text).unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "unknown key accepted");
    // The unknown key is not repeated (it could be a pasted secret): its table,
    // its line and the allowed keys are named instead.
    assert!(
        !stderr.contains("retries_bogus_key"),
        "stderr must not repeat the unknown key: {stderr}"
    );
    assert!(
        stderr.contains("upstream:")
            && stderr.contains("line 13")
            && stderr.contains("`read_timeout`"),
        "stderr should name the table, the line and the allowed keys: {stderr}"
    );
    assert!(
        stderr.contains("unknown.toml"),
        "stderr should name the file: {stderr}"
    );

    // ttl below twice the tolerance.
    let path = dir.path().join("short-ttl.toml");
    fs::write(
        &path,
        valid_config("literal-e2e-secret").replace("ttl = \"15m\"", "ttl = \"9m\""),
    )
    .unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ttl 9m with tolerance 5m accepted");
    assert!(stderr.contains("replay.ttl"), "{stderr}");
    // Exactly twice is fine.
    fs::write(
        &path,
        valid_config("literal-e2e-secret").replace("ttl = \"15m\"", "ttl = \"10m\""),
    )
    .unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
    assert!(
        out.status.success(),
        "ttl = 2 x tolerance should be accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sign_output_verifies_independently() {
    let s = secret();
    let body = event_body(&event_id(), "inquiry.approved");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    fs::write(&file, &body).unwrap();
    let env = [("PG_E2E_SIGN_SECRET", s.as_str())];

    let out = run_cli(
        &[
            "sign",
            "--secret-env",
            "PG_E2E_SIGN_SECRET",
            "--timestamp",
            "1764151200",
            file.to_str().unwrap(),
        ],
        &env,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!("t=1764151200,v1={}\n", hmac_hex(&s, 1764151200, &body))
    );

    // From standard input.
    let out = run_cli(
        &[
            "sign",
            "--secret-env",
            "PG_E2E_SIGN_SECRET",
            "--timestamp",
            "1700000000",
            "-",
        ],
        &env,
        Some(&body),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("t=1700000000,v1={}\n", hmac_hex(&s, 1700000000, &body))
    );

    // Without --timestamp: now.
    let before = now();
    let out = run_cli(
        &[
            "sign",
            "--secret-env",
            "PG_E2E_SIGN_SECRET",
            file.to_str().unwrap(),
        ],
        &env,
        None,
    );
    let after = now();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let line = line.strip_suffix('\n').expect("ends with a newline");
    let (t, v1) = line
        .strip_prefix("t=")
        .and_then(|r| r.split_once(",v1="))
        .unwrap_or_else(|| panic!("unexpected sign output {line:?}"));
    let t: i64 = t.parse().unwrap();
    assert!(
        t >= before && t <= after,
        "t={t} not in [{before}, {after}]"
    );
    assert_eq!(v1, hmac_hex(&s, t, &body));
}

#[test]
fn signed_by_cli_is_accepted_by_proxy() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let out = run_cli(
        &["sign", "--secret-env", "PG_E2E_SIGN_SECRET2", "-"],
        &[("PG_E2E_SIGN_SECRET2", p.secret())],
        Some(&body),
    );
    assert!(out.status.success());
    let sig = String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string();
    let r = p.send(&delivery(ROUTE, &sig, &body));
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = up.wait_for_requests(1, std::time::Duration::from_secs(10));
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
}

// ---------------------------------------------------------------------------
// A secret written in the wrong place is never printed (docs/behaviour.md § Configuration)
// ---------------------------------------------------------------------------

/// Stands for a webhook secret pasted in the wrong place: distinctive, so that
/// any echo of it, whole or in part, shows.
const CANARY: &str = "wbhsec_LEAKCANARY_e2e_K8vT3pQ";

/// The first 6-character piece of [`CANARY`] found in `out`.
fn canary_piece_in(out: &str) -> Option<&'static str> {
    (0..=CANARY.len() - 6)
        .map(|i| &CANARY[i..i + 6])
        .find(|w| out.contains(w))
}

fn both_streams(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

/// `persona-guard trigger` against the proxy in front of `up`.
fn trigger(p: &Proxy, extra: &[&str]) -> Output {
    let url = format!("http://{}{ROUTE}", p.listen);
    let mut args = vec!["trigger", "inquiry.approved", "--url", &url];
    args.extend_from_slice(&["--secret-env", "PG_E2E_TRIGGER_SECRET"]);
    args.extend_from_slice(extra);
    run_cli(&args, &[("PG_E2E_TRIGGER_SECRET", p.secret())], None)
}

#[test]
fn trigger_sends_a_signed_event_that_is_forwarded() {
    let (up, p) = rig();
    let out = trigger(&p, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", both_streams(&out));
    assert!(stdout.contains("HTTP/1.1 200"), "{stdout}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-persona-event-type"),
        Some("inquiry.approved")
    );
    assert!(
        seen[0]
            .header("x-persona-event-id")
            .unwrap()
            .starts_with("evt_")
    );
    assert!(!stdout.contains(p.secret()));
}

#[test]
fn trigger_again_shows_duplicate() {
    let (up, p) = rig();
    let out = trigger(&p, &["--again"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", both_streams(&out));
    assert!(stdout.contains("duplicate"), "{stdout}");
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn trigger_last_attempt_failing_is_counted() {
    let (up, p) = rig();
    up.set_status(500);
    let out = trigger(&p, &["--attempts-left", "0", "--attempts-made", "8"]);
    assert!(out.status.success(), "{}", both_streams(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 500"));
    let series = format!("persona_guard_final_attempt_failures_total{{route=\"{ROUTE}\"}}");
    assert_eq!(p.metric(&series), 1.0);
}

#[test]
fn trigger_camel_inflection_still_gives_created_at() {
    let (up, p) = rig();
    let out = trigger(&p, &["--inflection", "camel"]);
    assert!(out.status.success(), "{}", both_streams(&out));
    let seen = up.requests();
    assert!(String::from_utf8_lossy(&seen[0].body).contains("\"createdAt\""));
    assert!(seen[0].header("x-persona-event-created-at").is_some());
}

#[test]
fn trigger_without_a_listener_fails_clearly() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/webhooks/persona");
    let out = run_cli(
        &[
            "trigger",
            "case.created",
            "--url",
            &url,
            "--secret-env",
            "PG_E2E_T",
        ],
        &[("PG_E2E_T", "wbhsec_x")],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to"));
    let out = run_cli(
        &[
            "trigger",
            "case.created",
            "--url",
            "https://x/y",
            "--secret-env",
            "PG_E2E_T",
        ],
        &[("PG_E2E_T", "wbhsec_x")],
        None,
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain-HTTP URL"));
}
