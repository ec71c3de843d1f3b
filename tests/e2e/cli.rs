//! `docs/behaviour.md` § Command line: `check` and `sign`; § Configuration: configuration errors never quote the file
//! (a secret written in the wrong place: `misplaced_secrets.rs`; `trigger`: `trigger.rs`).

use std::fs;
use std::process::Output;

use crate::harness::*;

pub(crate) fn valid_config(secret_ref: &str) -> String {
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
    // The unknown key is named with its table and line (docs/behaviour.md § Rules).
    assert!(
        stderr.contains("upstream: unknown key `retries_bogus_key` (line 13)"),
        "stderr should name the table, the key and the line: {stderr}"
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

/// docs/behaviour.md § Rules: every unknown key is named with its line and the closest allowed
/// key; a key that looks like a secret is reported by its line alone.
#[test]
fn check_names_every_unknown_key_with_a_suggestion() {
    const PASTED: &str = "wbhsec_e2eUnknownKey_P4sTeD9x";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typos.toml");
    let text = valid_config("literal-e2e-secret")
        .replace("tolerance = \"5m\"", "tolerence = \"5m\"")
        .replace("max_body = \"1MiB\"", "max_bdy = \"1MiB\"")
        .replace("[upstream]", "[upsteam]")
        .replace("[headers]", &format!("[headers]\n{PASTED} = 1"));
    fs::write(&path, text).unwrap();
    let out = run_cli(&["check", "--config", path.to_str().unwrap()], &[], None);
    let text = both_streams(&out);
    assert_eq!(out.status.code(), Some(64), "{text}");
    for expect in [
        "4 problems",
        "(top level): unknown table `upsteam` (line 9); did you mean `upstream`?",
        "headers: unknown key (line 20), not repeated here: it may be a misplaced secret",
        "route[0]: unknown key `tolerence` (line 28); did you mean `tolerance`?",
        "route[0]: unknown key `max_bdy` (line 29); did you mean `max_body`?",
    ] {
        assert!(text.contains(expect), "`{expect}` missing:\n{text}");
    }
    for piece in ["wbhsec", "e2eUnknown", "P4sTeD9x"] {
        assert!(!text.contains(piece), "`{piece}` printed:\n{text}");
    }
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
    assert_succeeded(&out);
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
    assert_succeeded(&out);
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

pub(crate) fn both_streams(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A route path with white space, a control character or anything outside
/// ASCII would leave the intended path unprotected: `check` refuses it,
/// naming `route[0].path` and the character's code point, never the value.
#[test]
fn check_refuses_a_route_path_that_is_not_visible_ascii() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (bad, code)) in [
        ("/webhooks/persona ", "U+0020"),
        ("/webhooks/persona\n", "U+000A"),
        ("/webhooks/\tpersona", "U+0009"),
        ("/webhooks/persona\u{200b}", "U+200B"),
        ("/webhooks/\u{a0}persona", "U+00A0"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("bad-{i}.toml"));
        let written = toml::Value::String(bad.to_string()).to_string();
        let text =
            valid_config("env:PG_E2E_CHECK_SECRET").replace("\"/webhooks/persona\"", &written);
        fs::write(&path, text).unwrap();
        let out = run_cli(
            &["check", "--config", path.to_str().unwrap()],
            &[("PG_E2E_CHECK_SECRET", &secret())],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("route[0].path: must be visible ASCII only") && stderr.contains(code),
            "{bad:?}: {stderr}"
        );
        assert!(!stderr.contains("/webhooks/"), "{stderr}");
    }
}
