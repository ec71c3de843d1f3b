//! The spool and the leases through everyday operations (`docs/behaviour.md`
//! § Delivery spool, "Restarts", "One process per spool"; § Replay memory,
//! "What a lease cannot cover"): a rolling deploy's SIGTERM while
//! redeliveries are in the app's hands, a second process on the same spool
//! directory, a spool entry left by an earlier process whose lease token a
//! new process could reuse, and a replica paused past `inflight_ttl`.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::spool::{accepted_counts, redeliveries, spool_series, spooling, wait_accepted};

/// `n` events spooled by a proxy whose app is down, then the app back but
/// taking `delay` per request: returns the app, the proxy and the ids, once
/// the app holds `in_hands` redeliveries.
fn spooled_then_slow(
    b: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
    n: usize,
    delay: Duration,
    in_hands: usize,
) -> (Upstream, Proxy, Vec<String>) {
    let (mut up, p) = rig_with(|x| b(x).set("server.grace_period", "8s"));
    up.stop();
    let ids: Vec<String> = (0..n).map(|_| event_id()).collect();
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(202, "spooled");
    }
    up.set_delay(delay);
    up.restart();
    wait_for("the app to hold redeliveries", W, || up.heads() >= in_hands);
    (up, p, ids)
}

/// SIGTERM while redeliveries are in the app's hands: the process waits for
/// them (within `grace_period`), records each 2xx, releases what it held
/// unsent, and exits 0; the next process delivers the rest, and nothing
/// reaches the app twice. `restart` starts the next process.
fn sigterm_mid_redelivery(
    b: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
    restart: impl FnOnce(&Upstream) -> Proxy,
) {
    // 40 entries: 32 in the app's hands at once (the worker's concurrency),
    // the rest held unsent when SIGTERM comes.
    let delay = Duration::from_secs(2);
    let (up, mut p, ids) = spooled_then_slow(b, 40, delay, 32);
    let in_hands_at_term = up.heads();
    let t0 = Instant::now();
    let st = p
        .terminate(Duration::from_secs(12))
        .expect("exits within the grace period");
    let took = t0.elapsed();
    assert!(st.success(), "{st:?}\n{}", p.logs());
    // It waited for the app's answers (about 2 s), not the whole grace period.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(7),
        "exited {took:?} after SIGTERM\n{}",
        p.logs()
    );
    assert!(p.logs().contains("draining the spool"), "{}", p.logs());
    let before = accepted_counts(&up);
    assert!(
        before.values().all(|n| *n == 1),
        "doubled before the restart: {before:?}"
    );
    up.set_delay(Duration::ZERO);
    let p2 = restart(&up);
    wait_accepted(&up, &ids, Duration::from_secs(20));
    wait_for("the spool to empty", W, || {
        p2.metric(&spool_series("depth")) == 0.0
    });
    let counts = accepted_counts(&up);
    let twice: Vec<_> = ids.iter().filter(|id| counts[*id] > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered twice across the SIGTERM: {twice:?}"
    );
    eprintln!(
        "SIGTERM mid-redelivery: {} events, {in_hands_at_term} in the app's hands, exit {took:?} after SIGTERM, {} delivered before it, none twice",
        ids.len(),
        before.len()
    );
}

#[test]
fn sigterm_mid_redelivery_waits_for_the_app_and_doubles_nothing_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    sigterm_mid_redelivery(
        |b| spooling(b, dir.path(), "on_failure"),
        |up| spooling(Proxy::builder().upstream(up), dir.path(), "on_failure").start(),
    );
}

#[test]
fn sigterm_mid_redelivery_on_redis_doubles_nothing_after_restart() {
    let redis = RedisServer::start();
    let on_redis = |b: ProxyBuilder| {
        b.redis(&redis.url())
            .set("spool.max_backoff", "1s")
            // The replica after the restart takes over what the first held
            // unsent once it has been idle this long.
            .set("replay.inflight_ttl", "2s")
            .route(|r| r.set("spool", "on_failure"))
    };
    sigterm_mid_redelivery(on_redis, |up| {
        on_redis(Proxy::builder().upstream(up)).start()
    });
}

/// Polls `/readyz` of `p` for `window`; whether it ever answered 200.
fn ever_ready(p: &Proxy, window: Duration) -> bool {
    wait_until(window, || p.readyz() == 200)
}

#[test]
fn a_second_process_on_the_spool_waits_for_the_lock_and_takes_over_when_the_first_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, mut first) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.stop();
    let ids: Vec<String> = (0..20).map(|_| event_id()).collect();
    for id in &ids {
        first
            .deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(202, "spooled");
    }
    // A rolling update on a shared volume: the new process starts while the
    // old one still runs, both before the app is back.
    let second = spooling(
        Proxy::builder()
            .upstream(&up)
            .secrets(vec![first.secret().to_string()]),
        dir.path(),
        "on_failure",
    )
    .start();
    wait_for("the second process to say it waits", W, || {
        second.logs().contains("locked by another process")
    });
    assert!(
        !ever_ready(&second, Duration::from_secs(1)),
        "ready without the spool's lock"
    );
    // Meanwhile it spools nothing: the app is down, so the answer is 502
    // and Persona retries (never a 202 it could not keep).
    let extra = event_id();
    second
        .deliver(&event_body(&extra, "inquiry.approved"))
        .assert_error(502, "upstream_unavailable");

    up.restart();
    wait_accepted(&up, &ids, Duration::from_secs(20));
    // The first exits (its rollout), the second takes the lock and is ready.
    assert!(
        first
            .terminate(Duration::from_secs(15))
            .expect("exits")
            .success()
    );
    wait_for("the second process to be ready", W, || {
        second.readyz() == 200
    });
    assert!(second.logs().contains("lock acquired"), "{}", second.logs());
    // It holds the spool now: an app failure spools, and the entry is
    // delivered once the app answers 2xx again.
    up.set_status(500);
    second
        .deliver(&event_body(&extra, "inquiry.approved"))
        .assert_status_json(202, "spooled");
    up.set_status(200);
    wait_accepted(&up, std::slice::from_ref(&extra), W);
    let counts = accepted_counts(&up);
    let twice: Vec<_> = ids.iter().filter(|id| counts[*id] > 1).collect();
    assert!(twice.is_empty(), "delivered by both processes: {twice:?}");
    assert_eq!(counts[&extra], 1);
}

/// The lease a spool entry carries was taken by an earlier process. Were
/// tokens a per-process counter, a live delivery of the same event in the
/// new process could hold the very same token, and the redelivery would
/// "take over" that live mark and send the event beside it.
#[test]
fn a_lease_token_of_an_earlier_process_never_matches_a_live_claim() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        |b: ProxyBuilder| spooling(b, dir.path(), "on_failure").set("spool.max_backoff", "1s");
    let (up, mut first) = rig_with(|b| spool(b).set("spool.max_age", "1s"));
    up.set_status(500);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    // The first claim of the first process: it becomes a dead letter.
    first.deliver(&body).assert_status_json(202, "spooled");
    wait_for("a dead letter", Duration::from_secs(15), || {
        first.metric(&spool_series("dead_letters")) == 1.0
    });
    assert!(
        first
            .terminate(Duration::from_secs(15))
            .expect("exits")
            .success()
    );

    let second = spool(
        Proxy::builder()
            .upstream(&up)
            .secrets(vec![first.secret().to_string()]),
    )
    .start();
    up.set_status(200);
    up.hold();
    // The app saw the first process's forward (answered 500).
    let seen = up.count();
    // Persona's manual retry, the first claim of the second process, is in
    // the app's hands...
    let live = {
        let (listen, secret) = (second.listen, second.secret().to_string());
        let body = body.clone();
        thread::spawn(move || {
            let sig = sign(&secret, now(), &body);
            one_shot(listen, &delivery(ROUTE, &sig, &body))
        })
    };
    wait_for("the live delivery in the app's hands", W, || {
        up.count() == seen + 1
    });
    // ...when the operator retries the dead letter. This process's memory
    // store started after the entry was spooled and cannot know whether the
    // event was delivered since: the retry needs force=true, and says why.
    let r = second.admin_request("POST", &format!("/spool/retry?id={id}"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "force_required");
    assert!(r.text().contains("memory replay store"), "{}", r.text());
    assert_eq!(up.count(), seen + 1);
    let r = second.admin_request("POST", &format!("/spool/retry?id={id}&force=true"));
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the worker to meet the live mark", W, || {
        second.metric_or_zero(&redeliveries("deferred")) >= 1.0
    });
    assert_eq!(up.count(), seen + 1, "sent beside the live delivery");
    up.release();
    assert_eq!(live.join().unwrap().status, 200);
    // The worker then finds the event delivered and drops the entry unsent.
    wait_for("the entry found delivered", Duration::from_secs(15), || {
        second.metric_or_zero(&redeliveries("duplicate")) >= 1.0
    });
    wait_for("the spool to empty", W, || {
        second.metric(&spool_series("depth")) == 0.0
    });
    assert_eq!(accepted_counts(&up)[&id], 1);
}

/// What a lease cannot cover, shown as documented: a replica paused (here
/// SIGSTOP) for longer than `inflight_ttl` while its request is in the
/// app's hands stops renewing its mark, and Persona's retry through another
/// replica reaches the app at the same time. Without the pause the same
/// retry is refused (the control).
#[test]
fn a_replica_paused_past_inflight_ttl_lets_a_retry_through_as_documented() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let secret = secret();
    let make = || {
        Proxy::builder()
            .upstream(&up)
            .secrets(vec![secret.clone()])
            .redis(&redis.url())
            .set("replay.inflight_ttl", "1s")
            .start()
    };
    let (a, b) = (make(), make());
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    up.hold();
    let first = {
        let (listen, secret, body) = (a.listen, secret.clone(), body.clone());
        thread::spawn(move || {
            let sig = sign(&secret, now(), &body);
            one_shot(listen, &delivery(ROUTE, &sig, &body))
        })
    };
    wait_for("A's delivery in the app's hands", W, || up.count() == 1);
    // The control: A alive, its lease renewed past several inflight_ttl.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        b.deliver(&body).assert_error(409, "delivery_in_progress");
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(up.count(), 1);

    kill("STOP", a.pid());
    // Persona's retries through B, until one is let through.
    let second = {
        let (listen, secret, body) = (b.listen, secret.clone(), body.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sig = sign(&secret, now(), &body);
                let r = one_shot(listen, &delivery(ROUTE, &sig, &body));
                if r.status != 409 || Instant::now() > deadline {
                    return r;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_for(
        "the retry to reach the app",
        Duration::from_secs(10),
        || up.count() == 2,
    );
    // Both copies are in the app's hands at once: the documented window.
    let ids: HashSet<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.header("x-persona-event-id").map(str::to_string))
        .collect();
    assert_eq!(ids, HashSet::from([id.clone()]));
    kill("CONT", a.pid());
    up.release();
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
    assert_eq!(accepted_counts(&up)[&id], 2);
    // The remedy the docs give: the app keys on this header, the same on both.
    b.deliver(&body).assert_status_json(200, "duplicate");
}
