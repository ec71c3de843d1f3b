//! `docs/behaviour.md` § Replay memory: replays are 200 `duplicate`, concurrent deliveries are 409,
//! the in-flight claim is kept while the app works and released when it fails or the client goes
//! away, and the memory is per route and forgets after its ttl.

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

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
