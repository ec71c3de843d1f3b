//! `docs/behaviour.md` § Command line: `trigger` sends a signed test event to a running proxy.

use std::process::Output;

use crate::cli::both_streams;
use crate::harness::*;

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
