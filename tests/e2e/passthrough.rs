//! Paths under no route: forwarded as sent; trusted headers stripped;
//! 502/504 on every path.

use std::time::{Duration, Instant};

use crate::common::*;

const W: Duration = Duration::from_secs(10);

#[test]
fn passthrough_get_and_post_forwarded_unchanged() {
    let up = Upstream::start();
    up.set_status(201);
    up.set_body(b"created-by-app");
    let p = proxy().upstream(&up).start();

    let r = p.send(&request(
        "GET",
        "/app/items?q=a%20b&x=1&x=2",
        &[
            ("Accept", "application/json"),
            ("X-Custom", "one"),
            ("X-Custom", "two"),
        ],
        b"",
    ));
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"created-by-app");
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].method, "GET");
    assert_eq!(recs[0].target, "/app/items?q=a%20b&x=1&x=2");
    assert_eq!(recs[0].header_all("x-custom"), vec!["one", "two"]);
    assert_eq!(recs[0].header("accept"), Some("application/json"));
    assert!(recs[0].body.is_empty());

    let body = b"{\"name\":\"Jane\",\"bytes\":\"\\u0000\xc3\xa9\"}".to_vec();
    let r = p.post(
        "/app/submit?id=7",
        &[("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(r.status, 201);
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs[1].method, "POST");
    assert_eq!(recs[1].target, "/app/submit?id=7");
    assert_eq!(recs[1].body, body);
    assert_eq!(recs[1].header("content-type"), Some("application/json"));

    // Other methods, and a chunked body.
    let r = p.send(&request("PUT", "/app/thing/1", &[], b"put-body"));
    assert_eq!(r.status, 201);
    let mut raw = chunked_head("PATCH", "/app/thing/2", &[("Content-Type", "text/plain")]);
    raw.extend_from_slice(&chunk_encode(b"chunked passthrough body", 5));
    let r = p.send(&raw);
    assert_eq!(r.status, 201);
    let recs = up.wait_for_requests(4, W);
    assert_eq!(
        (recs[2].method.as_str(), recs[2].target.as_str()),
        ("PUT", "/app/thing/1")
    );
    assert_eq!(recs[2].body, b"put-body");
    assert_eq!(
        (recs[3].method.as_str(), recs[3].target.as_str()),
        ("PATCH", "/app/thing/2")
    );
    assert_eq!(recs[3].body, b"chunked passthrough body");
}

#[test]
fn spoofed_trusted_headers_are_removed_on_passthrough() {
    let up = Upstream::start();
    let p = proxy().upstream(&up).start();
    let r = p.send(&request(
        "POST",
        "/app/hook",
        &[
            ("X-Persona-Event-Id", "evt_spoofed"),
            ("x-persona-event-type", "inquiry.approved"),
            ("X_Persona_Event_Id", "evt_spoofed_underscore"),
            ("X-PERSONA-EVENT-CREATED-AT", "2026-01-01T00:00:00Z"),
            ("x_persona_event_type", "all.underscores"),
            ("X-Persona-Event-Type_", "not-a-variant-keep"),
            ("X-Keep-Me", "yes"),
        ],
        b"{}",
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = &up.wait_for_requests(1, W)[0];
    for name in [TRUSTED_ID, TRUSTED_TYPE, TRUSTED_CREATED_AT] {
        assert!(
            rec.header_variants(name).is_empty(),
            "{name} variants must be removed, upstream saw {:?}",
            rec.headers
        );
    }
    assert_eq!(rec.header("x-keep-me"), Some("yes"));
    assert_eq!(rec.body, b"{}");
}

#[test]
fn passthrough_upstream_down_is_502() {
    let mut up = Upstream::start();
    let p = proxy().upstream(&up).connect_timeout("1s").start();
    up.stop();
    let r = p.send(&request("GET", "/app/health", &[], b""));
    r.assert_error(502, "upstream_unavailable");
    up.restart();
    let r = p.send(&request("GET", "/app/health", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn passthrough_slow_upstream_is_504() {
    let up = Upstream::start();
    up.set_delay(Duration::from_secs(4));
    let p = proxy().upstream(&up).read_timeout("1s").start();
    let started = Instant::now();
    let r = p.send(&request("GET", "/app/slow", &[], b""));
    r.assert_error(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "took {:?}",
        started.elapsed()
    );
}
