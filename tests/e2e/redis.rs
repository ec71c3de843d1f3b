//! The Redis replay store: two persona-guard processes sharing one real
//! `redis-server` (started here on a free loopback port, persistence off).

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Two replicas in front of `up`, sharing `redis` and a secret, each
/// configured by `f` too.
fn pair(
    up: &Upstream,
    redis: &RedisServer,
    f: impl Fn(ProxyBuilder) -> ProxyBuilder,
) -> (Proxy, Proxy) {
    let secret = secret();
    let make = || {
        f(Proxy::builder()
            .upstream(up)
            .secrets(vec![secret.clone()])
            .redis(&redis.url()))
        .start()
    };
    (make(), make())
}

#[test]
fn delivered_through_a_replayed_through_b_is_a_duplicate() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let (a, b) = pair(&up, &redis, |b| b);
    let body = event_body(&event_id(), "inquiry.approved");
    assert_eq!(a.deliver(&body).status, 200);
    b.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 1, "the app saw it once");
    // The mark lives in Redis, readable by operators.
    let keys = redis.command(&["KEYS", "persona-guard:*"]).unwrap();
    assert!(String::from_utf8_lossy(&keys).contains("/webhooks/persona:evt_"));
    assert_eq!(a.readyz(), 200);
}

#[test]
fn concurrent_identical_deliveries_over_two_replicas_forward_once() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    up.set_delay(Duration::from_millis(500));
    let (a, b) = pair(&up, &redis, |b| b);
    let body = Arc::new(event_body(&event_id(), "inquiry.approved"));
    let secret = a.secret().to_string();
    let targets = [a.listen, b.listen];
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let body = body.clone();
            let secret = secret.clone();
            let target = targets[i % 2];
            thread::spawn(move || {
                let raw = delivery(ROUTE, &sign(&secret, now(), &body), &body);
                one_shot(target, &raw)
            })
        })
        .collect();
    let answers: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let forwarded = answers
        .iter()
        .filter(|r| r.status == 200 && r.error_code().is_none() && r.body == DEFAULT_UPSTREAM_BODY)
        .count();
    assert_eq!(
        forwarded,
        1,
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text()))
            .collect::<Vec<_>>()
    );
    for r in &answers {
        assert!(
            r.body == DEFAULT_UPSTREAM_BODY
                || r.error_code().as_deref() == Some("delivery_in_progress")
                || r.text().contains("duplicate"),
            "{} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(up.count(), 1);
}

/// The in-flight lease across replicas: while A delivers to an app that takes
/// 3 x `inflight_ttl`, A renews the mark in Redis, so retries through A and B
/// are 409 all along; the app sees the event once and a retry is a duplicate.
#[test]
fn a_slow_delivery_through_a_holds_its_claim_against_retries_through_both() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let inflight = Duration::from_secs(1);
    let (a, b) = pair(&up, &redis, |b| {
        b.set("upstream.read_timeout", "10s")
            .set("replay.inflight_ttl", "1s")
    });
    up.set_delay(inflight * 3);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let (first, refused_for) =
        retries_while_in_flight(&[a.listen, b.listen], a.secret(), &body, &up, inflight);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.body, DEFAULT_UPSTREAM_BODY);
    assert!(
        refused_for >= inflight * 2,
        "retries were refused for {refused_for:?} only"
    );
    b.deliver(&body).assert_status_json(200, "duplicate");
    a.deliver(&body).assert_status_json(200, "duplicate");
    up.assert_saw_once(&id, &body);
}

/// A replica killed mid-delivery stops renewing: its mark expires within
/// `inflight_ttl` and Persona's retry through the other replica is forwarded.
#[test]
fn a_replica_killed_mid_delivery_frees_the_event_within_inflight_ttl() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let inflight = Duration::from_secs(2);
    let (a, b) = pair(&up, &redis, |b| {
        b.set("upstream.read_timeout", "30s")
            .set("replay.inflight_ttl", "2s")
    });
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let raw = delivery(ROUTE, &sign(a.secret(), now(), &body), &body);
    let a_addr = a.listen;
    // Its answer never comes (A dies); the thread is left to fail alone.
    thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| one_shot(a_addr, &raw));
    });
    up.wait_for_requests(1, W);
    // Past one renewal, so the mark in Redis is A's renewed one.
    thread::sleep(inflight);
    a.signal("KILL");
    let killed = Instant::now();
    b.deliver(&body).assert_error(409, "delivery_in_progress");
    up.release();
    let r = b.deliver_after_inflight(&body, inflight + W);
    let freed_after = killed.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, DEFAULT_UPSTREAM_BODY);
    assert!(
        freed_after <= inflight + Duration::from_secs(1),
        "the dead replica's mark held the event for {freed_after:?}"
    );
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs.len(), 2, "A's delivery and B's retry");
    b.deliver(&body).assert_status_json(200, "duplicate");
}

/// The app answered 2xx while Redis was down, so the delivered mark could
/// not be written then. The proxy keeps the in-flight mark renewed and
/// writes the delivered mark once Redis is back: a retry long after
/// `inflight_ttl` is a duplicate, not a second copy (before, the mark
/// expired and the retry was forwarded again).
#[test]
fn a_delivered_mark_lost_to_a_redis_outage_is_written_once_redis_is_back() {
    let mut redis = RedisServer::start_persistent();
    let up = Upstream::start();
    let inflight = Duration::from_secs(3);
    let p = Proxy::builder()
        .upstream(&up)
        .redis(&redis.url())
        .set("replay.inflight_ttl", "3s")
        .set("replay.redis_timeout", "300ms")
        .set("upstream.read_timeout", "30s")
        .start();
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let raw = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let addr = p.listen;
    let first = thread::spawn(move || one_shot(addr, &raw));
    up.wait_for_requests(1, W);
    redis.stop();
    up.release();
    let r = first.join().unwrap();
    assert_eq!(r.status, 200, "the app's answer: {}", r.text());
    wait_for("the failed delivered write counted", W, || {
        p.metric("persona_guard_replay_store_errors_total{op=\"commit\"}") >= 1.0
    });
    // Redis stays down a while: the outage is the fault.
    thread::sleep(Duration::from_millis(500));
    redis.restart();
    // The later write is logged; the answer below is what must hold.
    let written = wait_until(W, || {
        p.stderr()
            .contains("the delivered mark was written on a later try")
    });
    // Well past the in-flight mark's lifetime: only the delivered mark can
    // answer now.
    thread::sleep(inflight * 2);
    p.deliver(&body).assert_status_json(200, "duplicate");
    up.assert_saw_once(&id, &body);
    assert!(written, "no later write of the delivered mark was logged");
}

#[test]
fn upstream_failure_through_a_then_retry_through_b_is_forwarded() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let (a, b) = pair(&up, &redis, |b| b);
    let body = event_body(&event_id(), "inquiry.approved");
    up.set_status(500);
    assert_eq!(a.deliver(&body).status, 500);
    up.set_status(200);
    assert_eq!(b.deliver(&body).status, 200);
    a.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2);
}

#[test]
fn redis_down_fails_closed_then_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let (a, _b) = pair(&up, &redis, |b| b.set("replay.redis_timeout", "300ms"));
    assert_eq!(
        a.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );

    redis.stop();
    let body = event_body(&event_id(), "inquiry.approved");
    a.deliver(&body)
        .assert_error(503, "replay_store_unavailable");
    assert_eq!(up.count(), 1, "nothing forwarded while the store is down");
    assert_eq!(a.readyz(), 503);
    // Passthrough traffic does not depend on the store.
    assert_eq!(a.post("/health-of-app", &[], b"").status, 200);
    assert!(
        a.metric("persona_guard_replay_store_errors_total{op=\"claim\"}") >= 1.0,
        "{}",
        a.metrics()
    );

    redis.restart();
    let r = poll(W, || Some(a.deliver(&body)).filter(|r| r.status != 503))
        .expect("deliveries still 503 after Redis came back");
    assert_eq!(r.status, 200, "after Redis came back: {}", r.text());
    assert!(wait_until(W, || a.readyz() == 200));
    a.deliver(&body).assert_status_json(200, "duplicate");
}

#[test]
fn fail_open_forwards_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let (a, _b) = pair(&up, &redis, |b| {
        b.set("replay.redis_timeout", "300ms")
            .set("replay.on_store_error", "allow")
    });
    redis.stop();
    let body = event_body(&event_id(), "inquiry.approved");
    assert_eq!(a.deliver(&body).status, 200);
    // No replay protection while it is down: the same delivery goes through again.
    assert_eq!(a.deliver(&body).status, 200);
    assert_eq!(up.count(), 2);
    assert_eq!(a.metric("persona_guard_replay_fail_open_total"), 2.0);
    assert!(a.stderr().contains("WITHOUT replay protection"));
}

#[test]
fn delivered_mark_expires_after_ttl() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let (a, b) = pair(&up, &redis, |b| {
        b.route(|r| r.set("tolerance", "1s"))
            .set("replay.ttl", "2s")
    });
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    assert_eq!(a.deliver(&body).status, 200);
    b.deliver(&body).assert_status_json(200, "duplicate");
    let key = format!("persona-guard:/webhooks/persona:{id}");
    let pttl = String::from_utf8(redis.command(&["PTTL", &key]).unwrap()).unwrap();
    let ms: i64 = pttl.trim_start_matches(':').trim().parse().unwrap();
    assert!((1..=2000).contains(&ms), "PTTL {ms}");
    assert!(wait_until(W, || redis
        .command(&["EXISTS", &key])
        .unwrap()
        .starts_with(b":0")));
    assert_eq!(b.deliver(&body).status, 200, "forgotten after ttl");
    assert_eq!(up.count(), 2);
}

/// Redis closes connections idle for more than `timeout` seconds (a NAT or a
/// load balancer does the same): the first store call after such a gap must be
/// retried on a new connection, not count as a store error.
fn idle_cut(on_store_error: &str) -> (RedisServer, Upstream, Proxy) {
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| {
        b.redis(&redis.url())
            .set("replay.on_store_error", on_store_error)
    });
    let set = redis.command(&["CONFIG", "SET", "timeout", "1"]).unwrap();
    assert!(set.starts_with(b"+OK"), "{}", String::from_utf8_lossy(&set));
    // A first delivery opens (warms) the proxy's connection to Redis.
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );
    assert_eq!(up.count(), 1);
    // Redis drops the connection once it has been idle for over a second:
    // wait until the only client left is the one asking.
    wait_for("Redis to cut the proxy's idle connections", W, || {
        redis.clients() == 1
    });
    (redis, up, p)
}

#[test]
fn after_redis_cut_an_idle_connection_the_next_delivery_is_forwarded_not_refused() {
    let (_redis, up, p) = idle_cut("reject");
    let body = event_body(&event_id(), "inquiry.approved");
    let r = p.deliver(&body);
    assert_eq!(r.status, 200, "after an idle cut: {}", r.text());
    assert_eq!(r.body, DEFAULT_UPSTREAM_BODY);
    assert_eq!(up.count(), 2, "forwarded once");
    // ...and remembered: its replay is refused, nothing more reaches the app.
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2, "the replay was not forwarded");
    assert_eq!(
        p.metric("persona_guard_replay_store_errors_total{op=\"claim\"}"),
        0.0,
        "{}",
        p.metrics()
    );
}

#[test]
fn after_redis_cut_an_idle_connection_fail_open_still_protects_the_next_delivery() {
    let (_redis, up, p) = idle_cut("allow");
    let body = event_body(&event_id(), "inquiry.approved");
    let r = p.deliver(&body);
    assert_eq!(r.status, 200, "after an idle cut: {}", r.text());
    assert_eq!(up.count(), 2, "forwarded once");
    // It went through WITH replay protection: its replay is a duplicate...
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2, "the replay was not forwarded");
    // ...and nothing was forwarded without protection.
    assert_eq!(p.metric("persona_guard_replay_fail_open_total"), 0.0);
    assert!(!p.stderr().contains("WITHOUT replay protection"));
}

#[test]
fn route_and_event_id_never_collide_in_redis_keys() {
    // Before, keys were `<prefix><route>:<event id>`: route `/a:b` with event
    // `X` and route `/a` with event `b:X` were both `<prefix>/a:b:X`.
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| {
        b.redis(&redis.url())
            .route(|r| r.set("path", "/a:b"))
            .add_route("/a", |r| r)
    });
    let id = event_id();
    let send = |path: &str, id: &str| {
        let body = event_body(id, "inquiry.approved");
        p.send(&delivery(path, &sign(p.secret(), now(), &body), &body))
    };
    let first = send("/a:b", &id);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.body, DEFAULT_UPSTREAM_BODY, "{}", first.text());
    let second = send("/a", &format!("b:{id}"));
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.body,
        DEFAULT_UPSTREAM_BODY,
        "a distinct event, not a duplicate: {}",
        second.text()
    );
    let seen: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/a:b", "/a"]);
    // Each is still remembered on its own route: the replays are refused.
    send("/a:b", &id).assert_status_json(200, "duplicate");
    send("/a", &format!("b:{id}")).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2, "neither replay reached the app");
    // Two marks, still readable: the route's `:` is written `%3A`.
    let keys =
        String::from_utf8_lossy(&redis.command(&["KEYS", "persona-guard:*"]).unwrap()).into_owned();
    assert!(
        keys.contains(&format!("persona-guard:/a%3Ab:{id}")),
        "{keys}"
    );
    assert!(keys.contains(&format!("persona-guard:/a:b:{id}")), "{keys}");
}

/// Redis slower than `redis_timeout` (paused with SIGSTOP): the delivery is
/// answered 503 `replay_store_unavailable` within about `redis_timeout` and
/// nothing is forwarded; once Redis answers again the same event is delivered.
#[test]
fn redis_slower_than_redis_timeout_fails_closed_in_time_then_recovers() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| b.redis(&redis.url()).set("replay.redis_timeout", "500ms"));
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200,
        "a delivery before the pause"
    );
    let body = event_body(&event_id(), "inquiry.approved");
    {
        let _paused = redis.pause();
        let started = Instant::now();
        let r = p.deliver(&body);
        let took = started.elapsed();
        r.assert_error(503, "replay_store_unavailable");
        assert!(
            took < TIMEOUT + Duration::from_millis(1500),
            "503 after {took:?}; redis_timeout is {TIMEOUT:?}"
        );
        assert_eq!(up.count(), 1, "nothing forwarded while Redis is paused");
        assert_eq!(p.readyz(), 503, "not ready while Redis does not answer");
        assert!(
            p.metric("persona_guard_replay_store_errors_total{op=\"claim\"}") >= 1.0,
            "{}",
            p.metrics()
        );
    } // SIGCONT
    // The timed-out claim may still land as an in-flight mark; the proxy
    // releases it by its token, so the retry goes through after at most a 409.
    let r = p.deliver_after_inflight(&body, Duration::from_secs(15));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, DEFAULT_UPSTREAM_BODY),
        "after SIGCONT: {}",
        r.text()
    );
    assert_eq!(up.count(), 2);
    wait_for("readyz 200 after SIGCONT", W, || p.readyz() == 200);
    p.deliver(&body).assert_status_json(200, "duplicate");
}

/// The twin with `on_store_error = "allow"`: the delivery is forwarded,
/// without replay protection, within about `redis_timeout`; once Redis answers
/// again deliveries are protected again.
#[test]
fn redis_slower_than_redis_timeout_fails_open_with_allow() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| {
        b.redis(&redis.url())
            .set("replay.redis_timeout", "500ms")
            .set("replay.on_store_error", "allow")
    });
    {
        let _paused = redis.pause();
        let id = event_id();
        let started = Instant::now();
        let r = p.deliver(&event_body(&id, "inquiry.approved"));
        let took = started.elapsed();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, DEFAULT_UPSTREAM_BODY),
            "forwarded while Redis is paused: {}",
            r.text()
        );
        assert!(
            took < TIMEOUT + Duration::from_millis(1500),
            "answered after {took:?}; redis_timeout is {TIMEOUT:?}"
        );
        let recs = up.wait_for_requests(1, W);
        assert_eq!(recs[0].header(TRUSTED_ID), Some(id.as_str()));
        assert_eq!(p.metric("persona_guard_replay_fail_open_total"), 1.0);
    } // SIGCONT
    let body = event_body(&event_id(), "inquiry.approved");
    let r = p.deliver(&body);
    assert_eq!(r.status, 200, "after SIGCONT: {}", r.text());
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2);
    assert_eq!(
        p.metric("persona_guard_replay_fail_open_total"),
        1.0,
        "protected again after SIGCONT"
    );
}

#[test]
fn a_rotated_redis_password_takes_effect_on_sighup() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    fs::write(&pw_file, "first-password\n").unwrap();
    redis.require_password("first-password");
    let up = Upstream::start();
    let p = Proxy::builder()
        .upstream(&up)
        .redis(&redis.url())
        .set(
            "replay.redis_password",
            format!("file:{}", pw_file.display()),
        )
        .set("replay.on_store_error", "reject")
        .start();
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );

    // Rotate: Redis wants the new password, and drops every connection so
    // that the old one is asked for again.
    redis.rotate_password("first-password", "second-password");
    p.deliver(&event_body(&event_id(), "inquiry.approved"))
        .assert_error(503, "replay_store_unavailable");

    // The mounted secret is updated in place, then SIGHUP.
    fs::write(&pw_file, "second-password\n").unwrap();
    let before = p.stderr();
    p.reload_ok();
    let log = p.stderr()[before.len()..].to_string();
    assert!(log.contains("Redis client rebuilt"), "{log}");
    assert!(log.contains("replay.redis_password"), "{log}");
    assert!(
        !log.contains("second-password"),
        "the password is never logged"
    );
    let body = event_body(&event_id(), "inquiry.approved");
    assert_eq!(p.deliver(&body).status, 200);
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 2, "the refused delivery never reached the app");
    assert_eq!(p.readyz(), 200);
}
