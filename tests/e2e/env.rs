//! `docs/configuration.md` § Environment variables: the configuration from `PERSONA_GUARD_*`
//! variables alone (no file), and `check --print`.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A `persona-guard run` with no `--config`, killed when dropped.
struct NoFileProxy {
    child: Child,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for NoFileProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz_ok(admin: SocketAddr) -> bool {
    TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok()
        && one_shot(admin, &request("GET", "/healthz", &[], b"")).status == 200
}

/// Starts `run` without a file, with `env` only; waits for `/healthz` and
/// the public listener.
fn start_without_file(
    env: &[(&str, String)],
    listen: SocketAddr,
    admin: SocketAddr,
) -> NoFileProxy {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = NoFileProxy {
        child: cmd.spawn().expect("spawn persona-guard"),
        stderr,
        _dir: dir,
    };
    let ready = poll(Duration::from_secs(20), || {
        if let Some(status) = p.child.try_wait().unwrap() {
            return Some(Err(status));
        }
        let up = healthz_ok(admin)
            && TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok();
        up.then_some(Ok(()))
    });
    match ready {
        Some(Ok(())) => p,
        other => panic!(
            "persona-guard without a file not ready: {other:?}\nstderr:\n{}",
            std::fs::read_to_string(&p.stderr).unwrap_or_default()
        ),
    }
}

#[test]
fn no_file_the_environment_alone_serves_a_signed_delivery() {
    let up = Upstream::start();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let secret = secret();
    let _proxy = start_without_file(
        &[
            ("PG_E2E_ENV_SECRET", secret.clone()),
            ("PERSONA_GUARD_LISTEN_ADDRESS", listen.to_string()),
            ("PERSONA_GUARD_ADMIN_ADDRESS", admin.to_string()),
            ("PERSONA_GUARD_UPSTREAM_ADDRESS", up.addr.to_string()),
            ("PERSONA_GUARD_ROUTE_PATH", "/hooks/persona".into()),
            (
                "PERSONA_GUARD_ROUTE_SECRETS",
                "env:PG_E2E_ENV_SECRET".into(),
            ),
            ("PERSONA_GUARD_ROUTE_EVENTS", "inquiry.*, report.*".into()),
            ("PERSONA_GUARD_SERVER_THREADS", "1".into()),
            ("PERSONA_GUARD_UNMATCHED", "deny".into()),
        ],
        listen,
        admin,
    );
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(&secret, now(), &body);
    let r = one_shot(listen, &delivery("/hooks/persona", &sig, &body));
    assert_eq!(r.status, 200, "{}", r.text());
    up.assert_saw_once(&id, &body);
    // The same delivery again: a duplicate, the app is not called.
    let r = one_shot(listen, &delivery("/hooks/persona", &sig, &body));
    r.assert_status_json(200, "duplicate");
    assert_eq!(up.accepted_ids(), vec![id]);
    // An event outside PERSONA_GUARD_ROUTE_EVENTS is not forwarded.
    let other = event_body(&event_id(), "case.created");
    let r = one_shot(
        listen,
        &delivery("/hooks/persona", &sign(&secret, now(), &other), &other),
    );
    assert_eq!(up.accepted_ids().len(), 1, "{}", r.text());
    // Unsigned: refused; a path under no route: denied (PERSONA_GUARD_UNMATCHED).
    one_shot(listen, &request("POST", "/hooks/persona", &[], &body))
        .assert_error(401, "missing_signature");
    assert_eq!(
        one_shot(listen, &request("GET", "/elsewhere", &[], b"")).status,
        404
    );
}

#[test]
fn check_print_shows_where_each_value_came_from_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg.toml");
    std::fs::write(
        &file,
        "[server]\ngrace_period = \"20s\"\n[[route]]\npath = \"/a\"\nsecrets = [\"env:PG_E2E_PRINT_SECRET\"]\n",
    )
    .unwrap();
    let secret = secret();
    let env = [
        ("PG_E2E_PRINT_SECRET", secret.as_str()),
        ("PERSONA_GUARD_REPLAY_TTL", "96h"),
        ("PERSONA_GUARD_ROUTE_SECRETS", "env:PG_E2E_PRINT_SECRET"),
    ];
    let out = run_cli(
        &["check", "--print", "--config", file.to_str().unwrap()],
        &env,
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ttl = \"96h\"  # env PERSONA_GUARD_REPLAY_TTL",
        "grace_period = \"20s\"  # file",
        "path = \"/a\"  # file",
        "secrets = [\"env:PG_E2E_PRINT_SECRET\"]  # env PERSONA_GUARD_ROUTE_SECRETS",
        "tolerance = \"5m\"  # default",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}\n{stdout}");
    }
    assert!(!stdout.contains(&secret), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&secret));

    // Without a file.
    let out = run_cli(
        &["check", "--print"],
        &[
            ("PG_E2E_PRINT_SECRET", secret.as_str()),
            ("PERSONA_GUARD_ROUTE_PATH", "/b"),
            ("PERSONA_GUARD_ROUTE_SECRETS", "env:PG_E2E_PRINT_SECRET"),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("path = \"/b\"  # env PERSONA_GUARD_ROUTE_PATH"));
    assert!(stdout.contains("(environment): ok (1 route"));
    assert!(!stdout.contains(&secret));
}

#[test]
fn an_unknown_or_bad_variable_fails_naming_the_variable_not_the_value() {
    let out = run_cli(
        &["check"],
        &[
            ("PERSONA_GUARD_ROUTE_PATH", "/b"),
            ("PERSONA_GUARD_ROUTE_SECRETS", "wbhsec_LEAKCANARY"),
            ("PERSONA_GUARD_REPLAY_TTLL", "48h"),
            ("PERSONA_GUARD_SERVER_THREADS", "LEAKCANARY"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "PERSONA_GUARD_ROUTE_SECRETS",
        "PERSONA_GUARD_REPLAY_TTLL",
        "PERSONA_GUARD_SERVER_THREADS",
    ] {
        assert!(
            stderr.contains(&format!("(environment): {var}: ")),
            "{var}\n{stderr}"
        );
    }
    assert!(!stderr.contains("LEAKCANARY"), "{stderr}");
}

/// A warning about a value a variable set names the variable, as an error
/// does; the same value from the file is named by its key (the twin).
#[test]
fn a_warning_names_the_variable_that_set_the_value() {
    let secret = secret();
    let base = [
        ("PG_E2E_WARN_SECRET", secret.as_str()),
        ("PERSONA_GUARD_ROUTE_PATH", "/b"),
        ("PERSONA_GUARD_ROUTE_SECRETS", "env:PG_E2E_WARN_SECRET"),
    ];
    let mut env = base.to_vec();
    env.push(("PERSONA_GUARD_REPLAY_TTL", "1h"));
    let out = run_cli(&["check"], &env, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: PERSONA_GUARD_REPLAY_TTL (replay.ttl): "),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg.toml");
    std::fs::write(&file, "[replay]\nttl = \"1h\"\n").unwrap();
    let out = run_cli(&["check", "--config", file.to_str().unwrap()], &base, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: replay.ttl: "), "{stderr}");
    assert!(!stderr.contains("PERSONA_GUARD_REPLAY_TTL"), "{stderr}");
}

/// A route path from the environment is held to the file's rule: visible
/// ASCII only (a trailing newline from a mounted ConfigMap, a zero-width
/// space); the variable is named, its value is not.
#[test]
fn a_route_path_variable_with_invisible_characters_fails() {
    for (bad, code) in [
        ("/webhooks/persona\n", "U+000A"),
        ("/webhooks/persona ", "U+0020"),
        ("/webhooks/\tpersona", "U+0009"),
        ("/webhooks/persona\u{200b}", "U+200B"),
        ("/webhooks/\u{a0}persona", "U+00A0"),
    ] {
        let out = run_cli(
            &["check"],
            &[
                ("PG_E2E_PATH_SECRET", "wbhsec_x"),
                ("PERSONA_GUARD_ROUTE_PATH", bad),
                ("PERSONA_GUARD_ROUTE_SECRETS", "env:PG_E2E_PATH_SECRET"),
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("PERSONA_GUARD_ROUTE_PATH (route[0].path): must be visible ASCII only")
                && stderr.contains(code),
            "{bad:?}: {stderr}"
        );
        assert!(!stderr.contains("/webhooks/"), "{stderr}");
    }
}
