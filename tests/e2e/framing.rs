//! `docs/behaviour.md` § Framing: ambiguous framing is refused with 400 and the
//! connection is closed; nothing ambiguous is forwarded.

use std::time::Duration;

use crate::harness::*;

fn assert_refused(name: &str, raw: &[u8]) {
    let (up, p) = rig();
    let mut c = p.client();
    c.send(raw);
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("{name}: expected a 400 response, got {e}"));
    assert_eq!(
        resp.status,
        400,
        "{name}: {} {:?} {}",
        resp.status,
        resp.headers,
        resp.text()
    );
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "{name}: connection should be closed"
    );
    // Nothing reached the upstream, now or a moment later. (pingora refuses
    // most of these before the proxy counts them: a window, not an event.)
    up.assert_nothing_seen_for(Duration::from_millis(200), name);
}

fn raw(head_lines: &str, body: &str) -> Vec<u8> {
    format!("POST /app/submit HTTP/1.1\r\nHost: e2e.test\r\n{head_lines}\r\n{body}").into_bytes()
}

#[test]
fn content_length_and_transfer_encoding_together_is_400() {
    assert_refused(
        "CL then TE",
        &raw(
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nG",
        ),
    );
    assert_refused(
        "TE then CL",
        &raw(
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
    );
}

#[test]
fn content_length_and_transfer_encoding_on_webhook_route_is_400() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let mut req = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: e2e\r\nPersona-Signature: {sig}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut c = p.client();
    c.send(&req);
    let resp = c.try_read_response().expect("a 400 response");
    resp.assert_error(400, "malformed_request");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection should be closed"
    );
    // Counted once the request is over: nothing of it can follow.
    p.wait_for_outcome_anywhere("malformed_request", 1);
    up.assert_nothing_seen("CL+TE on the route");
}

#[test]
fn two_different_content_lengths_is_400() {
    assert_refused(
        "conflicting CL",
        &raw("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
    );
}

#[test]
fn repeated_content_length_is_400() {
    assert_refused(
        "repeated identical CL",
        &raw("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
    );
    assert_refused("CL list", &raw("Content-Length: 5, 5\r\n", "hello"));
}

#[test]
fn transfer_encoding_other_than_chunked_is_400() {
    assert_refused(
        "gzip, chunked",
        &raw(
            "Transfer-Encoding: gzip, chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
    );
    assert_refused(
        "two TE headers",
        &raw(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
    );
}

#[test]
fn white_space_before_colon_is_400() {
    assert_refused(
        "space before colon (TE)",
        &raw(
            "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
            "hello",
        ),
    );
    assert_refused(
        "space before colon (benign header)",
        &raw("X-Test : 1\r\nContent-Length: 5\r\n", "hello"),
    );
}

#[test]
fn obsolete_line_folding_is_400() {
    assert_refused(
        "obs-fold",
        &raw("X-Test: a\r\n  folded\r\nContent-Length: 5\r\n", "hello"),
    );
}

#[test]
fn bare_cr_lf_or_nul_in_header_is_400() {
    assert_refused(
        "bare CR",
        &raw("X-Test: a\rb\r\nContent-Length: 5\r\n", "hello"),
    );
    assert_refused(
        "NUL",
        &raw("X-Test: a\0b\r\nContent-Length: 5\r\n", "hello"),
    );
    assert_refused("bare LF", &raw("X-Test: a\nContent-Length: 5\r\n", "hello"));
}

#[test]
fn obfuscated_transfer_encodings_are_400() {
    for (name, te) in [
        (
            "chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("identity", "Transfer-Encoding: identity\r\n"),
        (
            "chunked twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("x-chunked", "Transfer-Encoding: x-chunked\r\n"),
    ] {
        assert_refused(name, &raw(te, "0\r\n\r\n"));
    }
}

#[test]
fn too_many_headers_is_refused() {
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_refused("300 headers", &raw(&many, ""));
}

#[test]
fn oversized_head_is_refused_and_forwards_nothing() {
    let (up, p) = rig();
    let mut c = p.client();
    let big = format!("X-Big: {}\r\n", "a".repeat(1_100_000));
    // The proxy may answer and close before the whole head is written.
    let _ = c.try_send(&raw(&big, ""));
    match c.try_read_response() {
        Ok(r) => assert_eq!(r.status, 400, "{}", r.text()),
        Err(_) => assert!(c.closed_within(Duration::from_secs(5))),
    }
    up.assert_nothing_seen_for(Duration::from_millis(200), "an oversized head");
}

#[test]
fn pipelined_requests_are_each_judged_and_answered_in_order() {
    // RFC 9112 §9.3.2: requests sent back to back on one connection get their
    // answers in order. Each is judged on its own: the unsigned delivery
    // between two passthrough requests is refused, the others go upstream.
    let (up, p) = rig();
    let mut c = p.client();
    let mut pipeline = request("GET", "/first", &[], b"");
    pipeline.extend(request("POST", ROUTE, &[], b"{\"unsigned\":true}"));
    pipeline.extend(request("GET", "/after", &[], b""));
    c.send(&pipeline);
    assert_eq!(c.read_response().status, 200);
    let refused = c.read_response();
    refused.assert_error(401, "missing_signature");
    // The 401 came before its body was read: it closes the connection, and
    // says so, so the client knows to resend what followed.
    assert!(refused.connection_close(), "{:?}", refused.headers);
    let seen: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        seen,
        vec!["/first".to_string()],
        "the upstream saw {seen:?}"
    );
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn a_request_pipelined_behind_a_refused_delivery_is_answered() {
    // A forged delivery whose body was read (401 invalid_signature keeps the
    // connection), then a genuine one in the same write: both are answered,
    // in order, and only the genuine one reaches the app. Repeated, because
    // whether the second request arrives in the same read is up to the kernel.
    let (up, p) = rig();
    for round in 0..20 {
        let forged = event_body(&event_id(), "inquiry.approved");
        let body = event_body(&event_id(), "inquiry.approved");
        let mut bytes = delivery(ROUTE, &sign("wbhsec_wrong", now(), &forged), &forged);
        bytes.extend(delivery(ROUTE, &sign(p.secret(), now(), &body), &body));
        let mut c = p.client();
        c.send(&bytes);
        let first = c.read_response();
        first.assert_error(401, "invalid_signature");
        let second = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("round {round}: the pipelined delivery was dropped: {e}"));
        assert_eq!(second.status, 200, "round {round}: {}", second.text());
        let recs = up.wait_for_requests(round + 1, Duration::from_secs(5));
        assert_eq!(recs[round].body, body);
    }
    assert_eq!(up.count(), 20);
}

#[test]
fn a_request_pipelined_behind_a_verified_body_is_judged_on_its_own() {
    // A genuine delivery followed, in the same write, by a second request:
    // the proxy frames by Content-Length, forwards exactly the delivery, then
    // judges the second request as any other (here an unsigned delivery: 401,
    // and a passthrough request: forwarded as itself, never inside the first).
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let mut bytes = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    bytes.extend(request("POST", ROUTE, &[], b"{\"smuggled\":true}"));
    let mut c = p.client();
    c.send(&bytes);
    assert_eq!(c.read_response().status, 200);
    c.read_response().assert_error(401, "missing_signature");
    let recs = up.wait_for_requests(1, Duration::from_secs(5));
    assert_eq!(recs[0].body, body);

    let mut bytes = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    bytes.extend(request("POST", "/app/admin", &[], b"{\"second\":true}"));
    let mut c = p.client();
    c.send(&bytes);
    c.read_response().assert_status_json(200, "duplicate");
    assert_eq!(c.read_response().status, 200);
    let recs = up.wait_for_requests(2, Duration::from_secs(5));
    assert_eq!(
        recs.len(),
        2,
        "{:?}",
        recs.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    assert_eq!(
        (recs[1].target.as_str(), &recs[1].body[..]),
        ("/app/admin", &b"{\"second\":true}"[..])
    );
}
