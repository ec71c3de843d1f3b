//! Operating it: metrics that move, SIGHUP reload, SIGTERM drain, slow and idle
//! clients, JSON logs.

use std::fs;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

const W: Duration = Duration::from_secs(10);

fn requests_series(route: &str, outcome: &str) -> String {
    format!("persona_guard_requests_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

#[test]
fn metrics_move_with_each_outcome_and_secret() {
    let up = Upstream::start();
    let old = secret();
    let new = secret();
    let p = proxy()
        .upstream(&up)
        .secrets(vec![old.clone(), new.clone()])
        .start();
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
fn sighup_rotates_a_file_secret_adds_a_route_and_refuses_an_invalid_file() {
    let up = Upstream::start();
    let secrets_dir = tempfile::tempdir().unwrap();
    let secret_file = secrets_dir.path().join("webhook-secret");
    let old = secret();
    let new = secret();
    fs::write(&secret_file, format!("{old}\n")).unwrap();
    let file_route = format!(
        "[[route]]\npath = \"/hooks/file\"\nsecrets = [\"file:{}\"]\n",
        secret_file.display()
    );
    let p = proxy().upstream(&up).extra_toml(&file_route).start();
    let deliver_to = |path: &str, secret: &str, body: &[u8]| {
        p.send(&delivery(path, &sign(secret, now(), body), body))
    };

    let first = event_body(&event_id(), "inquiry.approved");
    assert_eq!(deliver_to("/hooks/file", &old, &first).status, 200);
    // Not a route yet: forwarded as is.
    assert_eq!(p.post("/hooks/added", &[], b"unsigned").status, 200);
    assert_eq!(up.wait_for_requests(2, W).len(), 2);

    // Rotate the mounted secret in place and add a route.
    fs::write(&secret_file, format!("{new}\n")).unwrap();
    let original = fs::read_to_string(&p.config).unwrap();
    fs::write(
        &p.config,
        format!(
            "{original}\n[[route]]\npath = \"/hooks/added\"\nsecrets = [\"file:{}\"]\n",
            secret_file.display()
        ),
    )
    .unwrap();
    p.signal("HUP");
    let ok_series = "persona_guard_config_reloads_total{result=\"ok\"}";
    assert!(
        wait_until(W, || p.metric_or_zero(ok_series) == 1.0),
        "{}",
        p.stderr()
    );

    let second = event_body(&event_id(), "inquiry.approved");
    assert_eq!(
        deliver_to("/hooks/file", &new, &second).status,
        200,
        "new secret accepted"
    );
    deliver_to(
        "/hooks/file",
        &old,
        &event_body(&event_id(), "inquiry.approved"),
    )
    .assert_error(401, "invalid_signature");
    deliver_to("/hooks/file", &new, &first).assert_status_json(200, "duplicate");
    p.post("/hooks/added", &[], b"unsigned")
        .assert_error(401, "missing_signature");
    assert_eq!(
        deliver_to(
            "/hooks/added",
            &new,
            &event_body(&event_id(), "inquiry.approved")
        )
        .status,
        200
    );

    // An invalid file is refused; the running configuration keeps serving.
    fs::write(
        &p.config,
        "[[route]]\npath = \"/x\"\nsecrets = [\"env:NOT_SET_ANYWHERE\"]\n",
    )
    .unwrap();
    p.signal("HUP");
    let err_series = "persona_guard_config_reloads_total{result=\"error\"}";
    assert!(
        wait_until(W, || p.metric_or_zero(err_series) == 1.0),
        "{}",
        p.stderr()
    );
    assert!(p.stderr().contains("reload refused"), "{}", p.stderr());
    assert!(
        p.stderr().contains("NOT_SET_ANYWHERE"),
        "the log names the problem"
    );
    assert_eq!(
        deliver_to(
            "/hooks/added",
            &new,
            &event_body(&event_id(), "inquiry.approved")
        )
        .status,
        200
    );
    p.post(ROUTE, &[], b"{}")
        .assert_error(401, "missing_signature");
}

#[test]
fn sigterm_lets_a_slow_delivery_finish_then_exits_zero() {
    let up = Upstream::start();
    up.set_delay(Duration::from_millis(1500));
    let mut p = proxy()
        .upstream(&up)
        .extra_toml("[server]\ngrace_period = \"10s\"\n")
        .start();
    let body = event_body(&event_id(), "inquiry.approved");
    let raw = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let listen = p.listen;
    let in_flight = thread::spawn(move || one_shot(listen, &raw));
    assert!(
        wait_until(W, || up.heads() == 1),
        "the delivery reached the app"
    );

    let sent = Instant::now();
    p.signal("TERM");
    // New connections are refused while the delivery is still in flight.
    assert!(
        wait_until(Duration::from_secs(1), || TcpStream::connect_timeout(
            &listen,
            Duration::from_millis(100)
        )
        .is_err()),
        "the listener still accepts after SIGTERM"
    );
    let r = in_flight.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight delivery completes: {}",
        r.text()
    );
    let st = p.terminate(Duration::from_secs(15)).expect("exits");
    let took = sent.elapsed();
    assert!(st.success(), "{st:?}");
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?}, beyond the grace period"
    );
}

#[test]
fn trickling_body_is_cut_off_with_408_and_the_id_stays_free() {
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .extra_toml("[server]\nbody_timeout = \"1s\"\n")
        .start();
    let body = event_body(&event_id(), "inquiry.approved");
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
    let body = event_body(&event_id(), "inquiry.approved");
    assert_eq!(p.deliver(&body).status, 200);
}

#[test]
fn idle_keepalive_connection_is_closed_after_idle_timeout() {
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .extra_toml("[server]\nidle_timeout = \"1s\"\n")
        .start();
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
fn json_logs_carry_the_request_fields() {
    let up = Upstream::start();
    let mut p = proxy()
        .upstream(&up)
        .top_toml("log_format = \"json\"\n")
        .start();
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
fn a_stalled_request_head_is_cut_off_after_header_timeout() {
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .extra_toml("[server]\nheader_timeout = \"1s\"\n")
        .start();
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
    thread::sleep(Duration::from_millis(1500));
    c.send(b"cd");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(up.wait_for_requests(1, W)[0].body, b"abcd");
}

#[test]
fn a_keepalive_connection_waits_idle_timeout_not_header_timeout() {
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .extra_toml("[server]\nheader_timeout = \"1s\"\nidle_timeout = \"4s\"\n")
        .start();
    let mut c = p.client();
    assert_eq!(c.request(&request("GET", "/one", &[], b"")).status, 200);
    thread::sleep(Duration::from_millis(1800));
    assert_eq!(c.request(&request("GET", "/two", &[], b"")).status, 200);
    assert_eq!(up.count(), 2);
}
