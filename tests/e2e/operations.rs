//! Operating it: logs that say what happened and never what they must not,
//! the admin endpoints and metrics that move, and the timeouts that bound
//! slow and idle clients. (Signals and reloads: `lifecycle.rs`.)

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn assert_logs_clean(log_level: Option<&str>) {
    let (up, mut p) = rig_with(|b| match log_level {
        Some(l) => b.env("RUST_LOG", l),
        None => b,
    });
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

/// The harness writes the proxy's stderr to a file, not a terminal: the text
/// log there is plain, with no ANSI colour or style codes around its fields.
#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let (_up, mut p) = rig();
    let id = event_id();
    assert_eq!(p.deliver(&event_body(&id, "inquiry.approved")).status, 200);
    let _ = p.terminate(W);
    let log = p.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no log line for {id}:\n{log}"));
    for field in [
        r#"outcome="forwarded""#,
        "status=200",
        r#"event_type="inquiry.approved""#,
    ] {
        assert!(line.contains(field), "no plain `{field}` in: {line:?}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "the log holds an ESC byte (a colour code): {log:?}"
    );
}

#[test]
fn json_logs_carry_the_request_fields() {
    let (_up, mut p) = rig_with(|b| b.set("log_format", "json"));
    let id = event_id();
    assert_eq!(p.deliver(&event_body(&id, "inquiry.approved")).status, 200);
    let _ = p.terminate(W);
    let lines: Vec<serde_json::Value> = p
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines
        .iter()
        .find(|v| v["event_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["route"], ROUTE);
    assert_eq!(line["outcome"], "forwarded");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["event_type"], "inquiry.approved");
    assert!(line["duration_ms"].as_f64().is_some());
    assert!(line["timestamp"].as_str().is_some());
}

#[test]
fn admin_endpoints_answer() {
    let (_up, p) = rig();
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

#[test]
fn metrics_move_with_each_outcome_and_secret() {
    let old = secret();
    let new = secret();
    let (_up, p) = rig_with(|b| b.secrets(vec![old.clone(), new.clone()]));
    let body = event_body(&event_id(), "inquiry.approved");
    p.post(ROUTE, &[], &body)
        .assert_error(401, "missing_signature");
    p.send(&delivery(ROUTE, &sign("wrong", now(), &body), &body))
        .assert_error(401, "invalid_signature");
    assert_eq!(
        p.send(&delivery(ROUTE, &sign(&new, now(), &body), &body))
            .status,
        200
    );
    p.send(&delivery(ROUTE, &sign(&old, now(), &body), &body))
        .assert_status_json(200, "duplicate");
    assert_eq!(p.post("/not-a-route", &[], b"").status, 200);

    let want = [
        (requests_series(ROUTE, "missing_signature"), 1.0),
        (requests_series(ROUTE, "invalid_signature"), 1.0),
        (requests_series(ROUTE, "forwarded"), 1.0),
        (requests_series(ROUTE, "duplicate"), 1.0),
        (requests_series(ROUTE, "timestamp_out_of_tolerance"), 0.0),
        (requests_series("(none)", "passthrough"), 1.0),
        (
            format!("persona_guard_secret_matches_total{{route=\"{ROUTE}\",secret=\"0\"}}"),
            1.0,
        ),
        (
            format!("persona_guard_secret_matches_total{{route=\"{ROUTE}\",secret=\"1\"}}"),
            1.0,
        ),
        ("persona_guard_replay_insertions_total".to_string(), 1.0),
        ("persona_guard_replay_entries".to_string(), 1.0),
    ];
    // `logging` runs just after the response is written: poll briefly.
    let ok = wait_until(W, || want.iter().all(|(s, v)| p.metric(s) == *v));
    assert!(ok, "metrics did not reach {want:?}:\n{}", p.metrics());
    let text = p.metrics();
    assert!(
        text.contains(&format!(
            "persona_guard_upstream_duration_seconds_count{{class=\"2xx\",route=\"{ROUTE}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "persona_guard_verify_duration_seconds_count{{route=\"{ROUTE}\"}} 3"
        )),
        "{text}"
    );
}

#[test]
fn trickling_body_is_cut_off_with_408_and_the_id_stays_free() {
    let (up, p) = rig_with(|b| b.set("server.body_timeout", "1s"));
    let id = event_id();
    let original = event_body(&id, "inquiry.approved");
    let body = original.clone();
    let raw = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let head_len = raw.len() - body.len();
    let mut c = p.client();
    c.send(&raw[..head_len + 10]);
    let started = Instant::now();
    let mut trickle = c.stream.try_clone().unwrap();
    let t = thread::spawn(move || {
        use std::io::Write;
        for b in body.iter().skip(10).take(40) {
            if trickle.write_all(&[*b]).is_err() {
                return;
            }
            // A client trickling its body: the pauses are the test.
            thread::sleep(Duration::from_millis(100));
        }
    });
    let r = c.read_response();
    r.assert_error(408, "body_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(c.closed_within(Duration::from_secs(2)));
    let _ = t.join();
    up.assert_nothing_seen("a trickled body");
    // The same event, delivered whole: its id was never claimed for good.
    let r = p.deliver(&original);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, DEFAULT_UPSTREAM_BODY, "forwarded, not a duplicate");
    up.assert_saw_once(&id, &original);
}

#[test]
fn a_stalled_request_head_is_cut_off_after_header_timeout() {
    let (up, p) = rig_with(|b| b.set("server.header_timeout", "1s"));
    let mut c = p.client();
    c.send(b"POST /webhooks/persona HTTP/1.1\r\nHost: e2e.test\r\nPersona-Signa");
    let started = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "a stalled head keeps its connection"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    up.assert_nothing_seen("a stalled head");
    // Bodies are not held to the head's timeout: a passthrough body pausing
    // longer than header_timeout still arrives.
    let mut c = p.client();
    c.send(b"POST /upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 4\r\n\r\nab");
    // A pause longer than header_timeout inside the body: the pause is the test.
    thread::sleep(Duration::from_millis(1500));
    c.send(b"cd");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(up.wait_for_requests(1, W)[0].body, b"abcd");
}

#[test]
fn idle_keepalive_connection_is_closed_after_idle_timeout() {
    let (_up, p) = rig_with(|b| b.set("server.idle_timeout", "1s"));
    let mut c = p.client();
    let r = c.request(&request("GET", "/passthrough", &[], b""));
    assert_eq!(r.status, 200);
    assert!(!r.connection_close());
    assert!(
        c.closed_within(Duration::from_secs(4)),
        "idle connection left open"
    );
}

#[test]
fn a_keepalive_connection_waits_idle_timeout_not_header_timeout() {
    let (up, p) = rig_with(|b| {
        b.set("server.header_timeout", "1s")
            .set("server.idle_timeout", "4s")
    });
    let mut c = p.client();
    assert_eq!(c.request(&request("GET", "/one", &[], b"")).status, 200);
    // Idle past header_timeout but within idle_timeout: the pause is the test.
    thread::sleep(Duration::from_millis(1800));
    assert_eq!(c.request(&request("GET", "/two", &[], b"")).status, 200);
    assert_eq!(up.count(), 2);
}
