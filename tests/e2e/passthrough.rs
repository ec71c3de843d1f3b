//! Paths under no route: forwarded as sent; trusted headers stripped;
//! 502/504 on every path.

use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn passthrough_get_and_post_forwarded_unchanged() {
    let (up, p) = rig();
    up.set_status(201);
    up.set_body(b"created-by-app");

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
    let (up, p) = rig();
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
    let (mut up, p) = rig_with(|b| b.set("upstream.connect_timeout", "1s"));
    up.stop();
    let r = p.send(&request("GET", "/app/health", &[], b""));
    r.assert_error(502, "upstream_unavailable");
    up.restart();
    let r = p.send(&request("GET", "/app/health", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn passthrough_slow_upstream_is_504() {
    let (up, p) = rig_with(|b| b.set("upstream.read_timeout", "1s"));
    up.set_delay(Duration::from_secs(4));
    let started = Instant::now();
    let r = p.send(&request("GET", "/app/slow", &[], b""));
    r.assert_error(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "took {:?}",
        started.elapsed()
    );
}

/// Small passthrough requests take the buffered path (one write upstream),
/// large, chunked and HTTP/1.0 ones pingora's streaming path: on one keep-alive
/// connection, mixed with a delivery, every body arrives byte-identical, in order.
#[test]
fn buffered_and_streaming_passthrough_share_a_keepalive_connection() {
    let (up, p) = rig();
    let limit = 64 * 1024;
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| b'a' + (i % 26) as u8).collect() };
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"small".to_vec(),
        pattern(limit),
        pattern(limit + 1),
        pattern(300 * 1024),
    ];
    let mut c = p.client();
    let r = c.request(&request("GET", "/app/0", &[], &bodies[0]));
    assert_eq!(r.status, 200, "{}", r.text());
    for (i, body) in bodies.iter().enumerate().skip(1) {
        let r = c.request(&request("POST", &format!("/app/{i}"), &[], body));
        assert_eq!(r.status, 200, "body {i}: {}", r.text());
    }
    let mut raw = chunked_head("POST", "/app/chunked", &[]);
    raw.extend_from_slice(&chunk_encode(&pattern(5000), 777));
    assert_eq!(c.request(&raw).status, 200);
    let id = event_id();
    let event = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &event);
    let r = c.request(&delivery(ROUTE, &sig, &event));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(&request("DELETE", "/app/last", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());

    let recs = up.wait_for_requests(bodies.len() + 3, W);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(recs[i].target, format!("/app/{i}"));
        assert_eq!(recs[i].body.len(), body.len(), "body {i}");
        assert!(recs[i].body == *body, "body {i} differs");
    }
    let n = bodies.len();
    assert_eq!(recs[n].target, "/app/chunked");
    assert_eq!(recs[n].body, pattern(5000));
    assert_eq!(recs[n + 1].body, event);
    assert_eq!(recs[n + 1].header(TRUSTED_ID), Some(id.as_str()));
    assert_eq!(
        (recs[n + 2].method.as_str(), recs[n + 2].target.as_str()),
        ("DELETE", "/app/last")
    );

    // HTTP/1.0 (streaming path): answered, then the connection closes.
    let r = one_shot(p.listen, b"GET /app/old HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_for_requests(n + 4, W)[n + 3].target, "/app/old");
}

/// The buffered path keeps pingora's answers to a broken upstream: a
/// connection refused mid-way through a keep-alive session is a 502, and the
/// next request on the same client connection succeeds once the app is back.
#[test]
fn buffered_passthrough_survives_an_upstream_restart() {
    let (mut up, p) = rig_with(|b| b.set("upstream.connect_timeout", "1s"));
    let mut c = p.client();
    assert_eq!(
        c.request(&request("POST", "/app/a", &[], b"one")).status,
        200
    );
    up.stop();
    let r = c.request(&request("POST", "/app/b", &[], b"two"));
    r.assert_error(502, "upstream_unavailable");
    up.restart();
    let r = c.request(&request("POST", "/app/c", &[], b"three"));
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs.last().unwrap().body, b"three");
}

/// How the app frames its answer does not matter to the buffered path: a
/// chunked body, an interim 103 (passed on), a 204, a body delimited by closing the
/// connection and a large body all reach the client intact.
#[test]
fn buffered_passthrough_relays_every_response_framing() {
    let big: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut large =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    large.extend_from_slice(&big);
    let up = ScriptedUpstream::start(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
            .to_vec(),
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade"
            .to_vec(),
        b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        large,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter".to_vec(),
    ]);
    let p = Proxy::builder()
        .set("upstream.address", format!("http://{}", up.addr))
        .start();
    let mut c = p.client();
    let r = c.request(&request("POST", "/app/chunked", &[], b"one"));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world"[..]));
    // An interim answer is passed on (RFC 9110 §15.2), then the final one.
    c.send(&request("POST", "/app/hints", &[], b"two"));
    let r = c.try_read_any().unwrap();
    assert_eq!(r.status, 103, "{:?}", r.headers);
    assert_eq!(r.header("link"), Some("</a.css>; rel=preload"));
    let r = c.read_response();
    assert_eq!((r.status, r.body.as_slice()), (201, &b"made"[..]));
    let r = c.request(&request("DELETE", "/app/nothing", &[], b""));
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = c.request(&request("GET", "/app/large", &[], b""));
    assert_eq!(r.status, 200);
    assert!(r.body == big, "2 MiB body differs ({} bytes)", r.body.len());
    // A body that ends when the app closes reaches the client whole; whether
    // the client's connection survives depends on how it is re-framed, so the
    // next request takes a new one. The proxy opens a new one to the app.
    let r = c.request(&request("GET", "/app/close-delimited", &[], b""));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"until the end"[..]));
    let r = one_shot(p.listen, &request("PUT", "/app/after", &[], b"six"));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"after"[..]),
        "{}",
        r.text()
    );
    let seen = up.seen();
    let bodies: Vec<&[u8]> = seen.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, [&b"one"[..], b"two", b"", b"", b"", b"six"]);
}

/// A client that says `Connection: close` gets its answer and a closed
/// connection; a body that arrives slowly in pieces is forwarded whole; a
/// client that hangs up mid-body sends the app nothing.
#[test]
fn buffered_passthrough_client_behaviour() {
    let (up, p) = rig();

    let mut c = p.client();
    let r = c.request(&request(
        "POST",
        "/app/bye",
        &[("Connection", "close")],
        b"last",
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection should close"
    );

    let body: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
    let raw = request("POST", "/app/slow", &[], &body);
    let head_len = raw.len() - body.len();
    let mut c = p.client();
    c.send(&raw[..head_len]);
    for piece in body.chunks(1000) {
        // A slow sender: the pauses are the test.
        std::thread::sleep(Duration::from_millis(300));
        c.send(piece);
    }
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());

    let mut c = p.client();
    c.send(&raw[..head_len + 100]);
    drop(c);
    // Counted once the proxy has given up on it: nothing of it can follow.
    p.wait_for_outcome_anywhere("client_error", 1);
    let recs = up.wait_for_requests(2, W);
    assert_eq!(
        recs.len(),
        2,
        "the half-sent request must not reach the app"
    );
    assert_eq!(recs[0].body, b"last");
    assert_eq!(recs[1].body, body);
}
