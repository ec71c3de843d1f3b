//! `docs/behaviour.md` § Outcomes: outcomes on a webhook route; the trusted headers, body limits and
//! framing of a delivery (signatures: `signatures.rs`; replays and the in-flight claim: `replay.rs`).

use std::time::Duration;

use crate::harness::*;

pub(crate) fn assert_trusted(rec: &Recorded, id: &str, name: &str) {
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
