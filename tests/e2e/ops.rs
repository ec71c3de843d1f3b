//! Logs, admin endpoints and shutdown.

use std::time::Duration;

use crate::common::*;

fn assert_logs_clean(log_level: Option<&str>) {
    let up = Upstream::start();
    let mut b = proxy().upstream(&up);
    if let Some(l) = log_level {
        b = b.env("RUST_LOG", l);
    }
    let mut p = b.start();
    let marker = unique("PII-MARKER-Jane-Doe-");
    let id = event_id();
    let body = String::from_utf8(event_body(&id, "inquiry.approved"))
        .unwrap()
        .replace("user-4242", &marker)
        .into_bytes();
    let t = now();
    let good = sign(p.secret(), t, &body);
    assert_eq!(p.send(&delivery(ROUTE, &good, &body)).status, 200);
    let mut tampered = body.clone();
    let i = tampered.len() - 2;
    tampered[i] = b' ';
    let bad_sig = sign(&secret(), t, &tampered);
    p.send(&delivery(ROUTE, &good, &tampered))
        .assert_error(401, "invalid_signature");
    p.send(&delivery(ROUTE, &bad_sig, &tampered))
        .assert_error(401, "invalid_signature");
    p.send(&delivery(ROUTE, "t=1,v1=zz-not-hex", &body))
        .assert_error(401, "malformed_signature");
    up.wait_for_requests(1, Duration::from_secs(10));
    let _ = p.terminate(Duration::from_secs(15));
    let logs = p.logs();
    let good_hex = hmac_hex(p.secret(), t, &body);
    let bad_hex = bad_sig.split("v1=").nth(1).unwrap().to_string();
    let secret = p.secret().to_string();
    // The requests were logged (a proxy that logs nothing must not pass).
    assert!(
        logs.lines()
            .any(|l| l.contains(&id) && l.contains("forwarded")),
        "no log line for the forwarded delivery {id} (RUST_LOG={log_level:?}):\n{logs}"
    );
    for (code, n) in [("invalid_signature", 2), ("malformed_signature", 1)] {
        assert_eq!(
            logs.lines().filter(|l| l.contains(code)).count(),
            n,
            "expected {n} log line(s) with outcome {code} (RUST_LOG={log_level:?}):\n{logs}"
        );
    }
    for (what, needle) in [
        ("secret", secret.as_str()),
        ("genuine signature", good_hex.as_str()),
        ("wrong signature", bad_hex.as_str()),
        ("body marker", marker.as_str()),
        ("body", "\"payload\""),
    ] {
        assert!(
            !logs.contains(needle),
            "logs (RUST_LOG={log_level:?}) contain the {what}:\n{logs}"
        );
    }
}

#[test]
fn logs_never_contain_secret_signature_or_body() {
    assert_logs_clean(None);
}

#[test]
fn debug_logs_never_contain_secret_signature_or_body() {
    assert_logs_clean(Some("debug"));
}

#[test]
fn sigterm_exits_zero() {
    let up = Upstream::start();
    let mut p = proxy().upstream(&up).start();
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );
    let st = p
        .terminate(Duration::from_secs(15))
        .expect("exits within 15 s of SIGTERM");
    assert!(st.success(), "exit status {st:?}; stderr {}", p.stderr());
}

#[test]
fn admin_endpoints_answer() {
    let up = Upstream::start();
    let p = proxy().upstream(&up).start();
    p.post(ROUTE, &[], b"{}")
        .assert_error(401, "missing_signature");
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );
    let h = one_shot(p.admin, &request("GET", "/healthz", &[], b""));
    assert_eq!(h.status, 200);
    let r = one_shot(p.admin, &request("GET", "/readyz", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = one_shot(p.admin, &request("GET", "/metrics", &[], b""));
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(text.contains("# TYPE"), "Prometheus text expected: {text}");
    assert!(
        text.contains("missing_signature"),
        "metrics should count outcomes by code: {text}"
    );
}
