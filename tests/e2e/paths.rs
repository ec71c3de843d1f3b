//! SPEC §3: routes and path normalisation.

use std::time::Duration;

use crate::common::*;

const W: Duration = Duration::from_secs(10);

#[test]
fn every_spelling_of_the_route_is_verified() {
    let up = Upstream::start();
    let p = proxy().upstream(&up).start();
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
    let up = Upstream::start();
    let p = proxy().upstream(&up).start();
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
    let up = Upstream::start();
    let p = proxy().upstream(&up).start();
    for path in [
        "/webhooks/%zz",
        "/other/%zz",
        "/app/%2",
        "/app/a%00b",
        "/webhooks/persona%00",
    ] {
        let resp = p.send(&request("GET", path, &[], b""));
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
    }
    up.assert_nothing_seen("undecodable paths");
}

#[test]
fn unmatched_deny_is_404() {
    let up = Upstream::start();
    let p = proxy().upstream(&up).unmatched("deny").start();
    for (m, path) in [
        ("GET", "/other"),
        ("POST", "/webhooks/personal"),
        ("GET", "/"),
    ] {
        let resp = p.send(&request(m, path, &[], b""));
        assert_eq!(resp.status, 404, "{m} {path}: {}", resp.text());
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
