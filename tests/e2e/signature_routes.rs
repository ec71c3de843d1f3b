//! `docs/behaviour.md` § Persona's delivery details: signature-only routes
//! (`kind = "signature"`, optional `id_pointer`) for Persona Workflows' requests.

use crate::harness::*;

/// A body a workflow author might configure: no event id, no event name.
fn workflow_body(inquiry: &str) -> Vec<u8> {
    format!(r#"{{"inquiry":{{"id":"{inquiry}","status":"approved"}},"note":"from a workflow"}}"#)
        .into_bytes()
}

fn signature_rig(id_pointer: Option<&'static str>) -> (Upstream, Proxy) {
    rig_with(|b| {
        b.route(|r| {
            let r = r.set("kind", "signature");
            match id_pointer {
                Some(p) => r.set("id_pointer", p),
                None => r,
            }
        })
    })
}

fn signed(p: &Proxy, t: i64, body: &[u8]) -> Response {
    p.send(&delivery(ROUTE, &sign(p.secret(), t, body), body))
}

#[test]
fn workflow_body_verified_and_forwarded_without_event_headers() {
    let (up, p) = signature_rig(None);
    let body = workflow_body(&unique("inq"));
    let r = p.deliver(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = &up.wait_for_requests(1, W)[0];
    assert_eq!(rec.body, body);
    for h in [TRUSTED_ID, TRUSTED_TYPE, TRUSTED_CREATED_AT] {
        assert!(rec.header_all(h).is_empty(), "{h}: {:?}", rec.headers);
    }
    // Not even JSON is required.
    assert_eq!(p.deliver(b"plain text, signed").status, 200);
    assert_eq!(up.wait_for_requests(2, W).len(), 2);
}

#[test]
fn identical_signed_request_is_duplicate_and_resigned_is_forwarded() {
    let (up, p) = signature_rig(None);
    let body = workflow_body(&unique("inq"));
    let t = now();
    assert_eq!(signed(&p, t, &body).status, 200);
    signed(&p, t, &body).assert_status_json(200, "duplicate");
    // The same set, spelt differently, is the same signed request.
    let sig = format!("  {} ", sign(p.secret(), t, &body).replace(',', " , "));
    p.send(&delivery(ROUTE, &sig, &body))
        .assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 1);
    // A retry signed afresh (new t) is forwarded again.
    assert_eq!(signed(&p, t - 1, &body).status, 200);
    assert_eq!(up.wait_for_requests(2, W).len(), 2);
}

#[test]
fn failed_signed_request_is_released() {
    let (up, p) = signature_rig(None);
    up.set_status(500);
    let body = workflow_body(&unique("inq"));
    let t = now();
    assert_eq!(signed(&p, t, &body).status, 500);
    up.set_status(200);
    assert_eq!(signed(&p, t, &body).status, 200);
    signed(&p, t, &body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2);
}

#[test]
fn id_pointer_deduplicates_on_the_field() {
    let (up, p) = signature_rig(Some("/inquiry/id"));
    let inquiry = unique("inq");
    let body = workflow_body(&inquiry);
    assert_eq!(p.deliver(&body).status, 200);
    let rec = &up.wait_for_requests(1, W)[0];
    assert_eq!(rec.header_all(TRUSTED_ID), vec![inquiry.as_str()]);
    assert!(rec.header_all(TRUSTED_TYPE).is_empty());
    // Re-signed, and even a different body with the same id: duplicate.
    p.deliver(&body).assert_status_json(200, "duplicate");
    let other = format!(r#"{{"inquiry":{{"id":"{inquiry}"}},"x":1}}"#);
    p.deliver(other.as_bytes())
        .assert_status_json(200, "duplicate");
    // Another id is forwarded; a missing or unusable one is invalid.
    assert_eq!(p.deliver(&workflow_body(&unique("inq"))).status, 200);
    for bad in [
        &br#"{"inquiry":{}}"#[..],
        br#"{"inquiry":{"id":{"x":1}}}"#,
        br#"{"inquiry":{"id":""}}"#,
        b"not json",
    ] {
        p.deliver(bad).assert_error(400, "invalid_event");
    }
    // A number is an id too.
    assert_eq!(p.deliver(br#"{"inquiry":{"id":4242}}"#).status, 200);
    p.deliver(br#"{"inquiry":{"id":4242},"again":true}"#)
        .assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 3);
}

#[test]
fn id_pointer_failure_releases_the_id() {
    let (up, p) = signature_rig(Some("/inquiry/id"));
    up.set_status(503);
    let body = workflow_body(&unique("inq"));
    assert_eq!(p.deliver(&body).status, 503);
    up.set_status(200);
    assert_eq!(p.deliver(&body).status, 200);
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2);
}

#[test]
fn bad_signature_is_401_on_a_signature_route() {
    let (up, p) = signature_rig(None);
    let body = workflow_body(&unique("inq"));
    p.deliver_to(ROUTE, "wbhsec_wrong", &body)
        .assert_error(401, "invalid_signature");
    p.post(ROUTE, &[], &body)
        .assert_error(401, "missing_signature");
    p.send(&delivery(
        ROUTE,
        &sign(p.secret(), now() - 3600, &body),
        &body,
    ))
    .assert_error(401, "timestamp_out_of_tolerance");
    assert_eq!(up.count(), 0);
}
