//! `docs/behaviour.md` § Signature verification and timestamps, § Outcomes: outcomes on a webhook route.

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn assert_trusted(rec: &Recorded, id: &str, name: &str) {
    assert_eq!(
        rec.header_all(TRUSTED_ID),
        vec![id],
        "event id header: {:?}",
        rec.headers
    );
    assert_eq!(
        rec.header_all(TRUSTED_TYPE),
        vec![name],
        "event type header: {:?}",
        rec.headers
    );
    assert_eq!(
        rec.header_all(TRUSTED_CREATED_AT),
        vec![CREATED_AT],
        "created-at header: {:?}",
        rec.headers
    );
}

#[test]
fn genuine_delivery_forwarded_byte_identical_with_trusted_headers() {
    let (up, p) = rig();
    up.set_status(202);
    up.set_body(br#"{"app":"accepted","n":1}"#);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let target = "/webhooks/persona?source=persona&b=%20x";
    let sig = sign(p.secret(), now(), &body);
    let resp = p.send(&delivery(target, &sig, &body));
    assert_eq!(resp.status, 202, "body {}", resp.text());
    assert_eq!(resp.body, br#"{"app":"accepted","n":1}"#);
    assert_eq!(resp.header("x-e2e-upstream"), Some("yes"));

    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, target);
    assert_eq!(r.body, body, "body must arrive byte-identical");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("persona-webhook-attempts-made"), Some("1"));
    assert_trusted(r, &id, "inquiry.approved");
}

#[test]
fn event_without_created_at_gets_no_created_at_header() {
    let (up, p) = rig();
    let id = event_id();
    let body = format!(
        r#"{{"data":{{"type":"event","id":"{id}","attributes":{{"name":"inquiry.completed","payload":{{}}}}}}}}"#
    );
    let resp = p.deliver(body.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = &up.wait_for_requests(1, W)[0];
    assert_eq!(r.header_all(TRUSTED_ID), vec![id.as_str()]);
    assert_eq!(r.header_all(TRUSTED_TYPE), vec!["inquiry.completed"]);
    assert!(
        r.header_all(TRUSTED_CREATED_AT).is_empty(),
        "{:?}",
        r.headers
    );
}

/// An event as Persona sends it under an `api-key-inflection`: the
/// created-at attribute (and the payload's keys) spelt `key`.
fn inflected_event(id: &str, key: &str) -> Vec<u8> {
    let payload_key = key.replace("created", "completed");
    format!(
        r#"{{"data":{{"type":"event","id":"{id}","attributes":{{"name":"inquiry.approved","{key}":"{CREATED_AT}","payload":{{"data":{{"type":"inquiry","id":"inq_1","attributes":{{"{payload_key}":"2026-11-26T09:59:40.000Z"}}}}}}}}}}}}"#
    )
    .into_bytes()
}

fn created_at_header_under(key: &str) {
    let (up, p) = rig();
    let id = event_id();
    let body = inflected_event(&id, key);
    let resp = p.deliver(&body);
    assert_eq!(resp.status, 200, "{key}: {}", resp.text());
    let r = &up.wait_for_requests(1, W)[0];
    assert_eq!(r.body, body);
    assert_trusted(r, &id, "inquiry.approved");
}

#[test]
fn created_at_read_under_kebab_inflection() {
    created_at_header_under("created-at");
}

#[test]
fn created_at_read_under_camel_inflection() {
    created_at_header_under("createdAt");
}

#[test]
fn created_at_read_under_snake_inflection() {
    created_at_header_under("created_at");
}

#[test]
fn missing_signature_is_401() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let resp = p.post(ROUTE, &[("Content-Type", "application/json")], &body);
    resp.assert_error(401, "missing_signature");
    up.assert_nothing_seen("missing signature");
}

#[test]
fn malformed_signature_is_401() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let t = now();
    let good = hmac_hex(p.secret(), t, &body);
    let cases = [
        "nonsense".to_string(),
        format!("t=notanumber,v1={good}"),
        format!("v1={good}"),
        format!("t={t}"),
        String::new(),
    ];
    for h in &cases {
        let resp = p.send(&delivery(ROUTE, h, &body));
        resp.assert_error(401, "malformed_signature");
    }
    up.assert_nothing_seen("malformed signature");
}

/// Two `Persona-Signature` header lines cannot be read one way: refused, even
/// when each line verifies on its own; the same delivery with one line goes through.
#[test]
fn repeated_signature_header_is_401_malformed() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let t = now();
    let sig = sign(p.secret(), t, &body);
    let sig2 = sign(p.secret(), t - 1, &body);
    for (a, b) in [(&sig, &sig), (&sig, &sig2)] {
        let raw = request(
            "POST",
            ROUTE,
            &[
                ("Content-Type", "application/json"),
                ("Persona-Signature", a),
                ("Persona-Signature", b),
            ],
            &body,
        );
        p.send(&raw).assert_error(401, "malformed_signature");
    }
    // Counted once each request is over: nothing of them can follow.
    p.wait_for_outcome(ROUTE, "malformed_signature", 2);
    up.assert_nothing_seen("repeated Persona-Signature header");
    // Positive twin: one header line, same body and signature.
    let raw = request(
        "POST",
        ROUTE,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", &sig),
        ],
        &body,
    );
    let resp = p.send(&raw);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.body, DEFAULT_UPSTREAM_BODY);
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].body, body);
    assert_trusted(&recs[0], &id, "inquiry.approved");
}

#[test]
fn tampered_body_is_401_invalid_signature() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let tampered = String::from_utf8(body.clone())
        .unwrap()
        .replace("\"approved\"", "\"declined\"")
        .into_bytes();
    assert_eq!(tampered.len(), body.len());
    assert_ne!(tampered, body);
    let resp = p.send(&delivery(ROUTE, &sig, &tampered));
    resp.assert_error(401, "invalid_signature");
    up.assert_nothing_seen("tampered body");
}

#[test]
fn wrong_secret_is_401_invalid_signature() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let resp = p.send(&delivery(ROUTE, &sign(&secret(), now(), &body), &body));
    resp.assert_error(401, "invalid_signature");
    // Key is the secret string's raw bytes, not a decoding of it: a signature
    // made with the secret minus its prefix must not verify either.
    let stripped = p.secret().trim_start_matches("wbhsec_").to_string();
    let resp = p.send(&delivery(ROUTE, &sign(&stripped, now(), &body), &body));
    resp.assert_error(401, "invalid_signature");
    up.assert_nothing_seen("wrong secret");
}

#[test]
fn stale_and_future_timestamps_are_401() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("tolerance", "5m")));
    for t in [now() - 330, now() + 330, now() - 86_400, 0] {
        let body = event_body(&event_id(), "inquiry.approved");
        let resp = p.send(&delivery(ROUTE, &sign(p.secret(), t, &body), &body));
        resp.assert_error(401, "timestamp_out_of_tolerance");
    }
    up.assert_nothing_seen("stale or future timestamps");
}

#[test]
fn timestamp_just_inside_tolerance_is_accepted() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("tolerance", "5m")));
    for (i, off) in [-299i64, 299].into_iter().enumerate() {
        let id = event_id();
        let body = event_body(&id, "inquiry.approved");
        let resp = p.send(&delivery(
            ROUTE,
            &sign(p.secret(), now() + off, &body),
            &body,
        ));
        assert_eq!(resp.status, 200, "offset {off}: {}", resp.text());
        let recs = up.wait_for_requests(i + 1, W);
        assert_eq!(recs[i].header(TRUSTED_ID), Some(id.as_str()));
    }
}

#[test]
fn liberal_signature_parsing_strict_acceptance() {
    let (up, p) = rig();
    let other = secret();
    type Mk = Box<dyn Fn(i64, &str, &str) -> String>;
    // (t, good hex, bad hex) -> header value
    let forms: Vec<(&str, Mk)> = vec![
        (
            "unknown v0 key",
            Box::new(|t, g, _| format!("t={t},v0=deadbeef,v1={g}")),
        ),
        (
            "two v1 in one set",
            Box::new(|t, g, b| format!("t={t},v1={b},v1={g}")),
        ),
        (
            "upper-case hex",
            Box::new(|t, g, _| format!("t={t},v1={}", g.to_ascii_uppercase())),
        ),
        (
            "extra spaces between sets",
            Box::new(|t, g, b| format!("t={t},v1={b}    t={t},v1={g}")),
        ),
        (
            "space after comma",
            Box::new(|t, g, _| format!("t={t}, v1={g}")),
        ),
    ];
    let mut expected = 0;
    for (name, mk) in &forms {
        let id = event_id();
        let body = event_body(&id, "inquiry.approved");
        let t = now();
        let h = mk(
            t,
            &hmac_hex(p.secret(), t, &body),
            &hmac_hex(&other, t, &body),
        );
        let resp = p.send(&delivery(ROUTE, &h, &body));
        assert_eq!(
            resp.status,
            200,
            "{name} ({h}) should be accepted: {}",
            resp.text()
        );
        expected += 1;
        let recs = up.wait_for_requests(expected, W);
        assert_eq!(
            recs[expected - 1].header(TRUSTED_ID),
            Some(id.as_str()),
            "{name}"
        );
    }
    // Strict: sets that do not verify are refused however they are dressed.
    let body = event_body(&event_id(), "inquiry.approved");
    let t = now();
    let bad = hmac_hex(&other, t, &body);
    for h in [
        format!("t={t},v0={bad},v1={bad}"),
        format!("t={t},v1={}", &bad[..32]),
    ] {
        let resp = p.send(&delivery(ROUTE, &h, &body));
        assert_eq!(resp.status, 401, "{h}: {}", resp.text());
    }
    assert_eq!(up.count(), expected);
}

#[test]
fn body_over_max_body_with_content_length_is_413() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("max_body", "64KiB")));
    let body = big_event_body(&event_id(), "inquiry.approved", 200 * 1024);
    let sig = sign(p.secret(), now(), &body);
    let raw = delivery(ROUTE, &sig, &body);
    let head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut c = p.client();
    let resp = c
        .send_streaming(&raw[..head_len], raw[head_len..].to_vec(), 4096)
        .expect("a 413 response");
    resp.assert_error(413, "body_too_large");
    up.assert_nothing_seen("declared oversize body");

    // The proxy still serves afterwards, and a body under the limit passes.
    let id = event_id();
    let ok = big_event_body(&id, "inquiry.approved", 60 * 1024);
    assert_eq!(p.deliver(&ok).status, 200);
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].body, ok);
}

#[test]
fn chunked_body_over_max_body_is_413() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("max_body", "64KiB")));
    let body = big_event_body(&event_id(), "inquiry.approved", 300 * 1024);
    let head = signed_chunked_head(p.secret(), &body);
    let mut c = p.client();
    let resp = c
        .send_streaming(&head, chunk_encode(&body, 8 * 1024), 8 * 1024 + 8)
        .expect("a 413 response");
    resp.assert_error(413, "body_too_large");
    up.assert_nothing_seen("streamed oversize body");
}

#[test]
fn non_post_on_webhook_route_is_405() {
    let (up, p) = rig();
    let resp = p.send(&request("GET", ROUTE, &[], b""));
    resp.assert_error(405, "method_not_allowed");
    let body = event_body(&event_id(), "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    for m in ["PUT", "DELETE", "PATCH"] {
        let resp = p.send(&request(m, ROUTE, &[("Persona-Signature", &sig)], &body));
        resp.assert_error(405, "method_not_allowed");
    }
    up.assert_nothing_seen("405");
}

#[test]
fn early_rejections_close_the_connection() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("max_body", "64KiB")));
    let body = event_body(&event_id(), "inquiry.approved");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("405", request("GET", ROUTE, &[], b""), 405),
        ("401 missing", request("POST", ROUTE, &[], &body), 401),
        ("401 malformed", delivery(ROUTE, "garbage", &body), 401),
    ];
    for (name, raw, status) in cases {
        let mut c = p.client();
        let resp = c.request(&raw);
        assert_eq!(resp.status, status, "{name}: {}", resp.text());
        assert!(
            resp.connection_close(),
            "{name}: expected Connection: close, headers {:?}",
            resp.headers
        );
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{name}: connection left open"
        );
    }
    // 413 on a declared length.
    let mut c = p.client();
    let sig = sign(p.secret(), now(), b"x");
    let head = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: e2e\r\nPersona-Signature: {sig}\r\nContent-Length: 10000000\r\n\r\n"
    );
    let resp = c
        .send_streaming(head.as_bytes(), vec![b'x'; 256 * 1024], 8192)
        .expect("413");
    assert_eq!(resp.status, 413);
    assert!(resp.connection_close(), "413: headers {:?}", resp.headers);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "413: connection left open"
    );
    up.assert_nothing_seen("early rejections");
}

#[test]
fn verified_but_invalid_event_is_400() {
    let (up, p) = rig();
    let id = event_id();
    let bodies: Vec<(&str, String)> = vec![
        ("not JSON", "this is not json {".to_string()),
        ("JSON array", "[1,2,3]".to_string()),
        (
            "no data.id",
            r#"{"data":{"type":"event","attributes":{"name":"inquiry.approved","created-at":"2026-11-26T10:00:00.000Z"}}}"#
                .to_string(),
        ),
        (
            "no data.attributes.name",
            format!(r#"{{"data":{{"type":"event","id":"{id}","attributes":{{"created-at":"2026-11-26T10:00:00.000Z"}}}}}}"#),
        ),
    ];
    for (name, body) in &bodies {
        let resp = p.deliver(body.as_bytes());
        assert_eq!(resp.status, 400, "{name}: {}", resp.text());
        resp.assert_error(400, "invalid_event");
    }
    up.assert_nothing_seen("invalid events");
}

#[test]
fn event_not_in_allow_list_is_ignored_and_not_remembered() {
    let (up, p) =
        rig_with(|b| b.route(|r| r.set("events", vec!["inquiry.*", "verification.passed"])));
    let id = event_id();
    let body = event_body(&id, "account.created");
    let r1 = p.deliver(&body);
    r1.assert_status_json(200, "ignored");
    // Same delivery again (Persona re-signs): still ignored, not duplicate.
    let r2 = p.deliver(&body);
    r2.assert_status_json(200, "ignored");
    let r3 = p.deliver(&event_body(&event_id(), "verification.failed"));
    r3.assert_status_json(200, "ignored");
    up.assert_nothing_seen("ignored events");

    // Allowed types are forwarded (glob and exact).
    let a = event_id();
    assert_eq!(p.deliver(&event_body(&a, "inquiry.approved")).status, 200);
    let b = event_id();
    assert_eq!(
        p.deliver(&event_body(&b, "verification.passed")).status,
        200
    );
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].header(TRUSTED_ID), Some(a.as_str()));
    assert_eq!(recs[1].header(TRUSTED_ID), Some(b.as_str()));
}

#[test]
fn replay_is_200_duplicate_and_forwarded_once() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let raw = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let first = p.send(&raw);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.body, DEFAULT_UPSTREAM_BODY);
    // Exact replay of the captured bytes.
    p.send(&raw).assert_status_json(200, "duplicate");
    // Persona-style retry: re-signed, same event id.
    p.deliver(&body).assert_status_json(200, "duplicate");
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.len(), 1, "{recs:?}");
    // A different event still goes through.
    let other = event_id();
    assert_eq!(
        p.deliver(&event_body(&other, "inquiry.approved")).status,
        200
    );
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].header(TRUSTED_ID), Some(other.as_str()));
}

#[test]
fn concurrent_deliveries_of_one_event_forward_once() {
    const INFLIGHT_TTL_SECS: u64 = 30;
    let (up, p) = rig_with(|b| {
        b.set("upstream.read_timeout", "20s")
            .set("replay.inflight_ttl", format!("{INFLIGHT_TTL_SECS}s"))
    });
    // The app holds A until B is answered: B arrives while A is in flight.
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let raw_a = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let addr = p.listen;
    let a = thread::spawn(move || {
        let r = one_shot(addr, &raw_a);
        (r, Instant::now())
    });
    // B is sent while A is held by the upstream.
    up.wait_for_requests(1, W);
    let raw_b = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let b = one_shot(addr, &raw_b);
    let b_done = Instant::now();
    up.release();
    let (ra, a_done) = a.join().unwrap();
    assert_eq!(ra.status, 200, "first delivery: {}", ra.text());
    assert_eq!(ra.body, DEFAULT_UPSTREAM_BODY);
    b.assert_error(409, "delivery_in_progress");
    let ra_hdr = b.header("retry-after").expect("409 needs Retry-After");
    let secs: u64 = ra_hdr
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After must be whole seconds, got {ra_hdr:?}"));
    assert!(
        (1..=INFLIGHT_TTL_SECS).contains(&secs),
        "Retry-After {secs} should be within 1..={INFLIGHT_TTL_SECS} (inflight_ttl)"
    );
    assert!(
        b_done < a_done,
        "409 should be answered while A is in flight"
    );
    // Once A is settled, Persona's retry of the event is a duplicate.
    p.deliver(&body).assert_status_json(200, "duplicate");
    // Once all three requests are over, count: the app saw the event exactly once.
    for outcome in ["forwarded", "delivery_in_progress", "duplicate"] {
        p.wait_for_outcome(ROUTE, outcome, 1);
    }
    up.assert_saw_once(&id, &body);
}

/// The in-flight lease: an app that takes 3 x `inflight_ttl` to answer keeps
/// the event's claim all along (the proxy renews it), so Persona's retries
/// meanwhile are 409, the app sees the event once, and a later retry is a
/// duplicate.
#[test]
fn a_delivery_slower_than_inflight_ttl_keeps_its_claim_until_answered() {
    let inflight = Duration::from_secs(1);
    let (up, p) = rig_with(|b| {
        b.set("upstream.read_timeout", "10s")
            .set("replay.inflight_ttl", "1s")
    });
    up.set_delay(inflight * 3);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let (first, refused_for) =
        retries_while_in_flight(&[p.listen], p.secret(), &body, &up, inflight);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.body, DEFAULT_UPSTREAM_BODY);
    assert!(
        refused_for >= inflight * 2,
        "retries were refused for {refused_for:?} only: the claim was not held past inflight_ttl"
    );
    p.deliver(&body).assert_status_json(200, "duplicate");
    up.assert_saw_once(&id, &body);
}

#[test]
fn upstream_error_is_passed_through_and_retry_is_forwarded() {
    let (up, p) = rig();
    up.set_status(500);
    up.set_body(br#"{"app_error":"db down"}"#);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let r1 = p.deliver(&body);
    assert_eq!(r1.status, 500);
    assert_eq!(r1.body, br#"{"app_error":"db down"}"#);
    up.set_status(200);
    up.set_body(b"ok-now");
    let r2 = p.deliver(&body);
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.body, b"ok-now");
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs.len(), 2);
    let ids: Vec<_> = recs.iter().map(|r| r.header(TRUSTED_ID)).collect();
    assert_eq!(ids, vec![Some(id.as_str()); 2]);
    // Now it is delivered.
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2);
}

#[test]
fn upstream_down_is_502_and_claim_is_released() {
    let (mut up, p) = rig_with(|b| b.set("upstream.connect_timeout", "1s"));
    up.stop();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let r1 = p.deliver(&body);
    r1.assert_error(502, "upstream_unavailable");
    up.restart();
    let r2 = p.deliver(&body);
    assert_eq!(r2.status, 200, "after the upstream is back: {}", r2.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
    assert_eq!(recs[0].body, body);
}

#[test]
fn slow_upstream_is_504_and_claim_is_released() {
    let (up, p) = rig_with(|b| b.set("upstream.read_timeout", "1s"));
    up.set_delay(Duration::from_secs(4));
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let started = Instant::now();
    let r1 = p.deliver(&body);
    r1.assert_error(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "504 should come after ~read_timeout, took {:?}",
        started.elapsed()
    );
    up.set_delay(Duration::ZERO);
    let r2 = p.deliver(&body);
    assert_eq!(r2.status, 200, "retry with a fast upstream: {}", r2.text());
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs.len(), 2);
    let ids: Vec<_> = recs.iter().map(|r| r.header(TRUSTED_ID)).collect();
    assert_eq!(ids, vec![Some(id.as_str()); 2]);
}

#[test]
fn rotation_header_with_two_sets_second_verifies() {
    let (up, p) = rig();
    let old = secret();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let t = now();
    let h = format!("{} {}", sign(&old, t, &body), sign(p.secret(), t, &body));
    let resp = p.send(&delivery(ROUTE, &h, &body));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));

    // A stale set that verifies does not count; the fresh one that verifies does.
    let id2 = event_id();
    let body2 = event_body(&id2, "inquiry.approved");
    let h = format!(
        "{} {}",
        sign(p.secret(), now() - 3600, &body2),
        sign(p.secret(), now(), &body2)
    );
    assert_eq!(p.send(&delivery(ROUTE, &h, &body2)).status, 200);
    up.wait_for_requests(2, W);

    // Strict: the verifying set is stale and the fresh set does not verify.
    let body3 = event_body(&event_id(), "inquiry.approved");
    let h = format!(
        "{} {}",
        sign(p.secret(), now() - 3600, &body3),
        sign(&old, now(), &body3)
    );
    let resp = p.send(&delivery(ROUTE, &h, &body3));
    resp.assert_error(401, "timestamp_out_of_tolerance");
    // Neither set verifies.
    let body4 = event_body(&event_id(), "inquiry.approved");
    let h = format!(
        "{} {}",
        sign(&old, now(), &body4),
        sign(&secret(), now(), &body4)
    );
    p.send(&delivery(ROUTE, &h, &body4))
        .assert_error(401, "invalid_signature");
    assert_eq!(up.count(), 2);
}

#[test]
fn any_configured_secret_verifies() {
    let (a, b) = (secret(), secret());
    let (up, p) = rig_with(|p| p.secrets(vec![a.clone(), b.clone()]));
    for (i, s) in [&b, &a].into_iter().enumerate() {
        let id = event_id();
        let body = event_body(&id, "inquiry.approved");
        let resp = p.send(&delivery(ROUTE, &sign(s, now(), &body), &body));
        assert_eq!(resp.status, 200, "secret #{i}: {}", resp.text());
        let recs = up.wait_for_requests(i + 1, W);
        assert_eq!(recs[i].header(TRUSTED_ID), Some(id.as_str()));
    }
    let body = event_body(&event_id(), "inquiry.approved");
    p.send(&delivery(ROUTE, &sign(&secret(), now(), &body), &body))
        .assert_error(401, "invalid_signature");
    assert_eq!(up.count(), 2);
}

#[test]
fn large_body_with_content_length_arrives_identical() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("max_body", "1MiB")));
    let id = event_id();
    let body = big_event_body(&id, "document.created", 900 * 1024);
    assert!(body.len() > 890 * 1024 && body.len() < 1024 * 1024);
    let resp = p.deliver(&body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].body.len(), body.len());
    assert!(recs[0].body == body, "900 KiB body altered in transit");
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
}

#[test]
fn large_chunked_body_arrives_identical() {
    let (up, p) = rig_with(|b| b.route(|r| r.set("max_body", "1MiB")));
    let id = event_id();
    let body = big_event_body(&id, "document.created", 900 * 1024);
    let head = signed_chunked_head(p.secret(), &body);
    let mut c = p.client();
    let resp = c
        .send_streaming(&head, chunk_encode(&body, 7919), 32 * 1024)
        .expect("response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].body.len(), body.len());
    assert!(
        recs[0].body == body,
        "chunked 900 KiB body altered in transit"
    );
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
}

#[test]
fn spoofed_trusted_headers_are_replaced_on_delivery() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let raw = request(
        "POST",
        ROUTE,
        &[
            ("Persona-Signature", &sig),
            ("X-Persona-Event-Id", "evt_spoofed"),
            ("x-persona-event-type", "inquiry.spoofed"),
            ("X_Persona_Event_Id", "evt_spoofed_underscore"),
            ("X-PERSONA-EVENT-CREATED-AT", "1999-01-01T00:00:00Z"),
            ("x_persona-event_type", "mixed.spoof"),
        ],
        &body,
    );
    let resp = p.send(&raw);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = &up.wait_for_requests(1, W)[0];
    for (name, want) in [
        (TRUSTED_ID, id.as_str()),
        (TRUSTED_TYPE, "inquiry.approved"),
        (TRUSTED_CREATED_AT, CREATED_AT),
    ] {
        let got = r.header_variants(name);
        assert_eq!(
            got,
            vec![(name.to_string(), want.to_string())],
            "{name}: exactly one copy with the true value; all headers {:?}",
            r.headers
        );
    }
}

#[test]
fn keep_alive_tampered_then_genuine_on_one_connection() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    let mut c = p.client();
    let r1 = c.request(&delivery(ROUTE, &sig, &tampered));
    r1.assert_error(401, "invalid_signature");
    assert!(
        !r1.connection_close(),
        "401 after the body was read should keep the connection"
    );
    let r2 = c.request(&delivery(ROUTE, &sig, &body));
    assert_eq!(r2.status, 200, "{}", r2.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].body, body);
    // And a third, a replay, on the same socket.
    let r3 = c.request(&delivery(ROUTE, &sig, &body));
    r3.assert_status_json(200, "duplicate");
}

#[test]
fn expect_100_continue_delivery_works() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let raw = request(
        "POST",
        ROUTE,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", &sig),
            ("Expect", "100-continue"),
        ],
        &body,
    );
    let head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut c = p.client();
    c.send(&raw[..head_len]);
    // The interim 100 must arrive before any body byte is sent.
    c.set_read_timeout(Duration::from_secs(5));
    let interim = c
        .try_read_any()
        .unwrap_or_else(|e| panic!("no 100 Continue before the body was sent: {e}"));
    c.set_read_timeout(Duration::from_secs(20));
    assert_eq!(
        interim.status,
        100,
        "expected 100 Continue before the body, got {} {:?} {}",
        interim.status,
        interim.headers,
        interim.text()
    );
    up.assert_nothing_seen("before the body was sent");
    c.send(&raw[head_len..]);
    let final_resp = c.read_response();
    assert_eq!(final_resp.status, 200, "{}", final_resp.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].body, body);
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
    assert!(
        recs[0].header_all("expect").is_empty(),
        "Expect must not be forwarded (the proxy answered it): {:?}",
        recs[0].headers
    );
}

#[test]
fn replay_store_is_per_route_and_route_upstream_override_applies() {
    let up2 = Upstream::start();
    let other_secret = secret();
    let (up, p) = rig_with(|b| {
        b.env("PG_E2E_ROUTE2_SECRET", &other_secret)
            .add_route("/hooks/second", |r| {
                r.set("secrets", vec!["env:PG_E2E_ROUTE2_SECRET"])
                    .set("tolerance", "5m")
                    .set("max_body", "1MiB")
                    .set("upstream", up2.addr.to_string())
            })
    });
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    assert_eq!(p.deliver(&body).status, 200);
    // The first route's secret does not open the second route.
    p.send(&delivery(
        "/hooks/second",
        &sign(p.secret(), now(), &body),
        &body,
    ))
    .assert_error(401, "invalid_signature");
    // Same event id on the other route: its own replay memory, its own upstream.
    let r = p.send(&delivery(
        "/hooks/second",
        &sign(&other_secret, now(), &body),
        &body,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let recs2 = up2.wait_for_requests(1, W);
    assert_eq!(recs2[0].target, "/hooks/second");
    assert_eq!(recs2[0].header(TRUSTED_ID), Some(id.as_str()));
    p.send(&delivery(
        "/hooks/second",
        &sign(&other_secret, now(), &body),
        &body,
    ))
    .assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 1);
    assert_eq!(up2.count(), 1);
}

#[test]
fn delivered_event_is_forgotten_after_ttl() {
    let (up, p) = rig_with(|b| {
        b.route(|r| r.set("tolerance", "1s"))
            .set("replay.ttl", "2s")
    });
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let first = Instant::now();
    assert_eq!(p.deliver(&body).status, 200);
    p.deliver(&body).assert_status_json(200, "duplicate");
    // Poll (bounded) until the id is admitted again.
    let admitted = poll(Duration::from_secs(15), || {
        let r = p.deliver(&body);
        if r.status == 200 && up.count() == 2 {
            return Some(());
        }
        r.assert_status_json(200, "duplicate");
        None
    });
    assert!(
        admitted.is_some(),
        "event id still remembered 15 s after a 2 s ttl"
    );
    assert!(
        first.elapsed() >= Duration::from_millis(1500),
        "forgotten too early: {:?}",
        first.elapsed()
    );
}

#[test]
fn client_gone_mid_delivery_and_app_failing_releases_the_claim() {
    let (up, p) = rig();
    up.set_status(500);
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    {
        let mut c = p.client();
        c.send(&delivery(ROUTE, &sign(p.secret(), now(), &body), &body));
        // The client hangs up while the app is still working on it.
    }
    assert_eq!(up.wait_for_requests(1, W).len(), 1);
    up.set_status(200);
    up.release();
    let r = p.deliver_after_inflight(&body, W);
    assert_eq!(r.status, 200, "the retry must be forwarded: {}", r.text());
    assert_eq!(up.wait_for_requests(2, W).len(), 2);
}

#[test]
fn client_gone_mid_delivery_but_app_accepting_marks_it_delivered() {
    let (up, p) = rig();
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    {
        let mut c = p.client();
        c.send(&delivery(ROUTE, &sign(p.secret(), now(), &body), &body));
        // The client hangs up while the app is still working on it.
    }
    assert_eq!(up.wait_for_requests(1, W).len(), 1);
    up.release();
    // The app answered 2xx, so Persona's retry is a duplicate: the app has it once.
    let r = p.deliver_after_inflight(&body, W);
    r.assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 1);
}

#[test]
fn client_gone_mid_body_forwards_nothing_and_claims_nothing() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let full = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    {
        let mut c = p.client();
        c.send(&full[..full.len() - body.len() / 2]);
    }
    // Counted once the request is over: nothing of it can follow.
    p.wait_for_outcome_anywhere("client_error", 1);
    up.assert_nothing_seen("a delivery whose body never completed");
    let r = p.deliver(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_for_requests(1, W)[0].body, body);
}
