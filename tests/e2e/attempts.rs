//! `docs/behaviour.md` § Persona's delivery details: deliveries counted by
//! `Persona-Webhook-Attempts-Made`; a failure on the last attempt
//! (`Persona-Webhook-Attempts-Left: 0`) logged at `error` and counted.

use std::time::Duration;

use crate::harness::*;

const FINAL_LOG: &str = "Persona's last automatic attempt";

fn attempts_series(attempt: &str) -> String {
    format!("persona_guard_delivery_attempts_total{{attempt=\"{attempt}\",route=\"{ROUTE}\"}}")
}

fn final_series() -> String {
    format!("persona_guard_final_attempt_failures_total{{route=\"{ROUTE}\"}}")
}

/// A delivery of `body` signed now, with the attempt headers given (if any).
fn deliver_with(p: &Proxy, body: &[u8], made: Option<&str>, left: Option<&str>) -> Response {
    let sig = sign(p.secret(), now(), body);
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Persona-Signature", sig.as_str()),
    ];
    if let Some(m) = made {
        headers.push(("Persona-Webhook-Attempts-Made", m));
    }
    if let Some(l) = left {
        headers.push(("Persona-Webhook-Attempts-Left", l));
    }
    p.post(ROUTE, &headers, body)
}

#[test]
fn attempt_series_start_at_zero() {
    let (_up, p) = rig();
    for a in ["1", "2", "3", "4", "5", "6", "7", "8", "unknown"] {
        assert_eq!(p.metric(&attempts_series(a)), 0.0, "attempt {a}");
    }
    assert_eq!(p.metric(&final_series()), 0.0);
}

#[test]
fn forwarded_deliveries_counted_by_attempts_made() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("events", vec!["inquiry.*"])));
    // Counted under 1, 3, 8, 8 (capped), and unknown three times.
    let made = [
        Some("1"),
        Some("3"),
        Some("8"),
        Some("12"),
        Some("0"),
        Some("two"),
        None,
    ];
    for m in made {
        let r = deliver_with(
            &p,
            &event_body(&event_id(), "inquiry.approved"),
            m,
            Some("4"),
        );
        assert_eq!(r.status, 200, "{m:?}: {}", r.text());
    }
    assert_eq!(up.wait_for_requests(7, W).len(), 7);
    // Not forwarded, not counted: a bad signature, an ignored type, a duplicate.
    let body = event_body(&event_id(), "inquiry.approved");
    p.post(
        ROUTE,
        &[
            ("Persona-Signature", &sign("wbhsec_wrong", now(), &body)),
            ("Persona-Webhook-Attempts-Made", "1"),
        ],
        &body,
    )
    .assert_error(401, "invalid_signature");
    deliver_with(
        &p,
        &event_body(&event_id(), "account.created"),
        Some("2"),
        Some("4"),
    )
    .assert_status_json(200, "ignored");
    let dup = event_body(&event_id(), "inquiry.approved");
    assert_eq!(deliver_with(&p, &dup, Some("1"), Some("7")).status, 200);
    deliver_with(&p, &dup, Some("2"), Some("6")).assert_status_json(200, "duplicate");
    p.wait_for_outcome(ROUTE, "duplicate", 1);

    assert_eq!(p.metric(&attempts_series("1")), 2.0);
    assert_eq!(p.metric(&attempts_series("2")), 0.0);
    assert_eq!(p.metric(&attempts_series("3")), 1.0);
    assert_eq!(p.metric(&attempts_series("8")), 2.0);
    assert_eq!(p.metric(&attempts_series("unknown")), 3.0);
    assert_eq!(p.metric(&final_series()), 0.0);
}

#[test]
fn failure_on_the_last_attempt_is_logged_and_counted() {
    let (up, p) = rig();
    up.set_status(500);
    up.set_body(b"app-error-body-text");
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let r = deliver_with(&p, &body, Some("8"), Some("0"));
    assert_eq!(r.status, 500, "{}", r.text());
    p.wait_for_metric(&final_series(), 1.0);
    assert_eq!(p.metric(&attempts_series("8")), 1.0);
    let line = wait_for_log_line(&p, FINAL_LOG);
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("inquiry.approved"), "{line}");
    assert!(line.contains("500"), "{line}");
    // No body, neither the delivery's nor the app's, and no signature.
    let logs = p.logs();
    assert!(!logs.contains("Jane"), "{logs}");
    assert!(!logs.contains("app-error-body-text"), "{logs}");
    assert!(!logs.contains(p.secret()), "{logs}");
}

#[test]
fn unreachable_app_on_the_last_attempt_is_logged_and_counted() {
    let (mut up, p) = rig_with(|b| b.set("upstream.connect_timeout", "1s"));
    up.stop();
    let id = event_id();
    let r = deliver_with(
        &p,
        &event_body(&id, "inquiry.approved"),
        Some("8"),
        Some("0"),
    );
    r.assert_error(502, "upstream_unavailable");
    p.wait_for_metric(&final_series(), 1.0);
    let line = wait_for_log_line(&p, FINAL_LOG);
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("upstream_unavailable"), "{line}");
}

#[test]
fn app_timeout_on_the_last_attempt_is_logged_and_counted() {
    let (up, p) = rig_with(|b| b.set("upstream.read_timeout", "1s"));
    up.set_delay(Duration::from_secs(3));
    let id = event_id();
    let r = deliver_with(
        &p,
        &event_body(&id, "inquiry.approved"),
        Some("8"),
        Some("0"),
    );
    r.assert_error(504, "upstream_timeout");
    p.wait_for_metric(&final_series(), 1.0);
    let line = wait_for_log_line(&p, FINAL_LOG);
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("upstream_timeout"), "{line}");
    up.set_delay(Duration::ZERO);
}

#[test]
fn no_final_failure_on_success_or_with_attempts_left() {
    let (up, p) = rig();
    // The last attempt succeeds.
    let r = deliver_with(
        &p,
        &event_body(&event_id(), "inquiry.approved"),
        Some("8"),
        Some("0"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A failure Persona will retry, and one whose Attempts-Left is unreadable.
    up.set_status(503);
    for left in [Some("1"), None, Some("zero")] {
        let r = deliver_with(
            &p,
            &event_body(&event_id(), "inquiry.approved"),
            Some("7"),
            left,
        );
        assert_eq!(r.status, 503, "{left:?}");
    }
    p.wait_for_outcome(ROUTE, "forwarded", 4);
    assert_eq!(p.metric(&final_series()), 0.0);
    assert!(!p.logs().contains(FINAL_LOG), "{}", p.logs());
}

/// The first log line containing `needle`, once it is written.
fn wait_for_log_line(p: &Proxy, needle: &str) -> String {
    poll(W, || {
        p.logs()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{}", p.logs()))
}
