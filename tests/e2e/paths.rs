//! `docs/behaviour.md` § Paths and the route decision: routes and path normalisation.

use crate::harness::*;

#[test]
fn every_spelling_of_the_route_is_verified() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let spellings = [
        "/webhooks/persona",
        "/WEBHOOKS/persona",
        "/Webhooks/Persona/",
        "//webhooks//persona/",
        "/webhooks/./persona",
        "/x/../webhooks/persona",
        "/x/%2e%2e/webhooks/persona",
        "/webhooks%2Fpersona",
        "/webhooks%2fpersona",
        "/%77ebhooks/persona",
        "/webhooks/persona/",
        "/webhooks/persona?x=1",
        "/webhooks/persona/?x=1",
        "/webhooks/persona/sub",
        "/webhooks/persona/sub/deeper?q=1",
    ];
    for path in spellings {
        let resp = p.post(path, &[("Content-Type", "application/json")], &body);
        assert_eq!(
            resp.status,
            401,
            "{path} must be verified like the route, got {} {}",
            resp.status,
            resp.text()
        );
        assert_eq!(
            resp.error_code().as_deref(),
            Some("missing_signature"),
            "{path}"
        );
    }
    up.assert_nothing_seen("route spellings");

    // A genuine delivery on an unusual spelling is still accepted and forwarded as sent.
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let resp = p.send(&delivery(
        "/WEBHOOKS//persona/",
        &sign(p.secret(), now(), &body),
        &body,
    ));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].target, "/WEBHOOKS//persona/");
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
}

#[test]
fn sibling_path_on_no_segment_boundary_is_passthrough() {
    let (up, p) = rig();
    for (i, path) in ["/webhooks/personal", "/webhooks/persona-v2", "/webhooks"]
        .iter()
        .enumerate()
    {
        let resp = p.post(path, &[("Content-Type", "text/plain")], b"hello");
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(resp.body, DEFAULT_UPSTREAM_BODY);
        let recs = up.wait_for_requests(i + 1, W);
        assert_eq!(recs[i].target, *path);
        assert_eq!(recs[i].body, b"hello");
        assert!(recs[i].header_variants(TRUSTED_ID).is_empty());
    }
}

#[test]
fn undecodable_path_is_400() {
    let (up, p) = rig();
    for path in [
        "/webhooks/%zz",
        "/other/%zz",
        "/app/%2",
        "/app/a%00b",
        "/webhooks/persona%00",
    ] {
        let resp = p.send(&request("GET", path, &[], b""));
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        resp.assert_error(400, "invalid_path");
    }
    up.assert_nothing_seen("undecodable paths");
}

#[test]
fn unmatched_deny_is_404() {
    let (up, p) = rig_with(|b| b.set("unmatched", "deny"));
    for (m, path) in [
        ("GET", "/other"),
        ("POST", "/webhooks/personal"),
        ("GET", "/"),
    ] {
        let resp = p.send(&request(m, path, &[], b""));
        assert_eq!(resp.status, 404, "{m} {path}: {}", resp.text());
        resp.assert_error(404, "not_found");
    }
    up.assert_nothing_seen("unmatched deny");
    // The route itself still works.
    p.post(ROUTE, &[], b"{}")
        .assert_error(401, "missing_signature");
    let id = event_id();
    assert_eq!(p.deliver(&event_body(&id, "inquiry.approved")).status, 200);
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
}

/// Every class of target that real routers read under the route (absolute-form
/// with any scheme, `//host`, dot segments after the route, format suffixes,
/// trailing white space) is verified; nothing reaches the app unsigned.
#[test]
fn every_reading_of_the_route_is_verified() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    for (target, host) in [
        ("http://h/webhooks/persona", "h"),
        ("HTTPS://h:80/webhooks/persona", "h:80"),
        ("foo://h/webhooks/persona", "h"),
        ("//h/webhooks/persona", "e2e.test"),
        ("/\\h/webhooks/persona", "e2e.test"),
        ("/webhooks/persona/..", "e2e.test"),
        ("/webhooks/persona/%2e%2e", "e2e.test"),
        ("/webhooks/persona/%2E.", "e2e.test"),
        ("/webhooks/persona/..;x", "e2e.test"),
        ("/webhooks/persona.json", "e2e.test"),
        ("/webhooks/persona.", "e2e.test"),
        ("/webhooks/persona%2e", "e2e.test"),
        ("/webhooks/persona%0a", "e2e.test"),
        ("/a%2Fb/%2e%2e/webhooks/persona", "e2e.test"),
    ] {
        let raw = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(&body);
        p.send(&raw).assert_error(401, "missing_signature");
    }
    up.assert_nothing_seen("readings of the route");
}

/// A genuine delivery sent in absolute-form is verified and reaches the app in
/// origin-form, with the target's authority as Host; so does a passthrough
/// request, on the buffered path and on pingora's streaming path alike.
#[test]
fn absolute_form_is_forwarded_in_origin_form() {
    let (up, p) = rig();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let raw = request(
        "POST",
        "http://app.example/webhooks/persona?via=abs",
        &[("Persona-Signature", &sig)],
        &body,
    );
    // The helper's Host is e2e.test: pingora refuses a Host that differs from
    // the target's authority, so give the matching one.
    let raw = String::from_utf8(raw)
        .unwrap()
        .replacen("Host: e2e.test", "Host: app.example", 1);
    let resp = p.send(raw.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut c = p.client();
    c.send(b"GET HTTP://app.example:8080/other?q=1 HTTP/1.1\r\nHost: app.example:8080\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    c.send(
        b"POST http://app.example/streamed HTTP/1.1\r\nHost: app.example\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(c.read_response().status, 200);
    c.send(b"GET http://app.example HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let recs = up.wait_for_requests(4, W);
    let seen: Vec<(&str, Option<&str>)> = recs
        .iter()
        .map(|r| (r.target.as_str(), r.header("host")))
        .collect();
    assert_eq!(
        seen,
        [
            ("/webhooks/persona?via=abs", Some("app.example")),
            ("/other?q=1", Some("app.example:8080")),
            ("/streamed", Some("app.example")),
            ("/", Some("app.example")),
        ]
    );
    assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
    assert_eq!(recs[0].body, body);
    assert_eq!(recs[2].body, b"hello");
}

/// Targets in no form the proxy forwards in origin-form are refused.
#[test]
fn targets_in_other_forms_are_refused() {
    let (up, p) = rig();
    for target in ["mailto:x", "x:/webhooks/persona", "urn:a:b"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: e2e.test\r\n\r\n");
        p.send(raw.as_bytes()).assert_error(400, "invalid_path");
    }
    // pingora answers CONNECT itself (405): a tunnel is never opened.
    let resp = p.send(b"CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n");
    assert_eq!(resp.status, 405);
    // `*` with another method is no form the proxy forwards either.
    let resp = p.send(b"POST * HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 0\r\n\r\n");
    resp.assert_error(400, "invalid_path");
    // Once every request is counted as over, nothing more can reach the app.
    p.wait_for_outcome_anywhere("invalid_path", 4);
    up.assert_nothing_seen("targets in other forms");
}

/// Asterisk-form (`OPTIONS *`) asks about the server: the proxy answers it
/// (204 with `Allow`) and never forwards it; the connection stays usable.
#[test]
fn asterisk_form_is_answered_by_the_proxy() {
    let (up, p) = rig();
    let mut c = p.client();
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: e2e.test\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert!(resp.body.is_empty());
    let allow = resp.header("allow").unwrap_or_default().to_string();
    assert!(
        allow.contains("OPTIONS") && allow.contains("POST"),
        "{allow}"
    );
    c.send(b"GET /after HTTP/1.1\r\nHost: e2e.test\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let recs = up.wait_for_requests(1, W);
    assert_eq!(recs[0].target, "/after");
    assert_eq!(up.count(), 1, "OPTIONS * reached the app");
}

/// `Host` must be a host with an optional port: one that carries a path, a
/// query, a fragment, user info or white space, or is empty, is refused with
/// 400 `malformed_request` on every path, before routing, and for asterisk-form
/// too. Nothing reaches the app; good Host spellings do.
#[test]
fn a_host_that_is_not_host_and_port_is_400() {
    let (up, p) = rig();
    let bad = [
        "x/webhooks/persona/",
        "x?y",
        "x#y",
        "u@x",
        "x y",
        "x\\webhooks",
        "x%2Fy",
        "x:80x",
        "[::1",
        "",
    ];
    for host in bad {
        for (method, target) in [("OPTIONS", "*"), ("POST", ROUTE), ("GET", "/other")] {
            let raw =
                format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
            let mut c = p.client();
            c.send(raw.as_bytes());
            let r = c.read_response();
            // pingora itself refuses user info in Host, with a bare 400.
            let code = if host.contains('@') {
                None
            } else {
                Some("malformed_request")
            };
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (400, code),
                "{method} {target} with Host {host:?}"
            );
            assert!(c.closed_within(W), "{method} {target} with Host {host:?}");
        }
    }
    // HTTP/1.0 may leave Host out, but one it sends is held to the rule.
    p.send(b"GET /old HTTP/1.0\r\nHost: x/webhooks/persona/\r\n\r\n")
        .assert_error(400, "malformed_request");
    up.assert_nothing_seen("bad Host spellings");
    for (i, host) in ["h", "h:80", "127.0.0.1:8080", "[::1]", "[2001:db8::1]:443"]
        .iter()
        .enumerate()
    {
        let raw = format!("GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(p.send(raw.as_bytes()).status, 200, "{host}");
        assert_eq!(
            up.wait_for_requests(i + 1, W)[i].header("host"),
            Some(*host)
        );
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400 and the
/// connection closed; HTTP/1.0 needs none.
#[test]
fn http11_without_host_is_400() {
    let (up, p) = rig();
    let body = event_body(&event_id(), "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    for target in ["/other", ROUTE] {
        let mut raw = format!(
            "POST {target} HTTP/1.1\r\nPersona-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let mut c = p.client();
        c.send(&raw);
        let resp = c.read_response();
        resp.assert_error(400, "malformed_request");
        assert!(c.closed_within(W), "{target}");
    }
    up.assert_nothing_seen("HTTP/1.1 without Host");
    // The positive twin: HTTP/1.0 without Host is forwarded.
    let resp = p.send(b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.wait_for_requests(1, W)[0].target, "/old");
}

/// A chunked body whose framing is broken gets a 400, on passthrough and on
/// the route, never a silent cut; the well-formed twin goes through.
#[test]
fn malformed_chunked_bodies_are_400() {
    let (up, p) = rig();
    for (name, chunks) in [
        ("a 0x size", &b"0x3\r\nabc\r\n0\r\n\r\n"[..]),
        ("a size that is not hex", b"zz\r\nabc\r\n0\r\n\r\n"),
        ("data longer than its size", b"3\r\nabcdef\r\n0\r\n\r\n"),
        ("no CRLF after the data", b"3\r\nabcXY0\r\n\r\n"),
    ] {
        for target in ["/app/upload", ROUTE] {
            let mut raw = chunked_head(
                "POST",
                target,
                &[("Persona-Signature", &sign(p.secret(), now(), b"abc"))],
            );
            raw.extend_from_slice(chunks);
            let resp = p.send(&raw);
            assert_eq!(resp.status, 400, "{name} to {target}: {}", resp.text());
            assert_eq!(
                resp.error_code().as_deref(),
                Some("malformed_request"),
                "{name}"
            );
        }
    }
    let mut raw = chunked_head("POST", "/app/upload", &[]);
    raw.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    assert_eq!(p.send(&raw).status, 200);
    let recs = up.requests();
    let whole: Vec<&Recorded> = recs.iter().filter(|r| r.body == b"abc").collect();
    assert_eq!(whole.len(), 1, "only the well-formed body arrives whole");
}
