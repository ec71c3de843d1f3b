//! `docs/behaviour.md` § Signature verification and timestamps: missing, malformed, tampered and
//! stale signatures on a webhook route, liberal parsing, rotation and several secrets.

use crate::harness::*;
use crate::webhook::assert_trusted;

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
