//! The delivery spool on the Redis store (`docs/behaviour.md` § Delivery
//! spool): a stream per route shared by every replica through one consumer
//! group. 202 once `XADD` is acknowledged, redelivered once, taken over from
//! a replica killed mid-redelivery, a Redis that is down answered as without
//! a spool, dead letters, and bodies sealed at rest with `[spool] key`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::spool::{accepted_counts, fallbacks, redeliveries, spool_series, wait_accepted};

/// The route's live stream with the default `key_prefix` (`persona-guard:`):
/// `<prefix>spool:<route>` (src/spool/redis.rs; the route has no `%` or `:`
/// to escape).
const STREAM: &str = "persona-guard:spool:/webhooks/persona";
/// The route's dead letters.
const DEAD: &str = "persona-guard:spool-dead:/webhooks/persona";

/// The proxy's configuration on the Redis store at `redis`, the first route
/// spooling `on_failure`, backoffs capped at 1 s so that a recovered app gets
/// its entries within the tests' deadlines.
fn on_redis(b: ProxyBuilder, redis: &RedisServer) -> ProxyBuilder {
    b.redis(&redis.url())
        .set("spool.max_backoff", "1s")
        .route(|r| r.set("spool", "on_failure"))
}

/// `XLEN key`, or `None` when Redis does not answer an integer.
fn xlen(redis: &RedisServer, key: &str) -> Option<i64> {
    let reply = redis.command(&["XLEN", key])?;
    std::str::from_utf8(reply.strip_prefix(b":")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The raw reply of `XRANGE key - +`, read whole however long it is
/// (`QUIT` pipelined after it, then read to the end), for looking at the
/// bytes Redis stores.
fn xrange_raw(redis: &RedisServer, key: &str) -> Vec<u8> {
    let addr = SocketAddr::from(([127, 0, 0, 1], redis.port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect redis");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = Vec::new();
    for args in [&["XRANGE", key, "-", "+"][..], &["QUIT"][..]] {
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the XRANGE reply");
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn on_failure_on_redis_spools_holds_the_id_and_delivers_once() {
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| on_redis(b, &redis));
    up.set_status(500);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    p.deliver(&body).assert_status_json(202, "spooled");
    // Counted once the request is over, which may be just after its answer.
    p.wait_for_outcome(ROUTE, "spooled", 1);
    // In Redis, in the route's stream. Without `[spool] key` the record is
    // plain: the body is readable there (the control for the sealed test).
    assert_eq!(xlen(&redis, STREAM), Some(1));
    let raw = xrange_raw(&redis, STREAM);
    assert!(contains(&raw, id.as_bytes()) && contains(&raw, b"Jane"));
    // Persona's re-signed retry while the entry waits, once the worker holds
    // it (taken, its mark adopted, tried): in flight. A retry racing the
    // adoption itself is `a_retry_racing_the_spools_adoption_is_refused`.
    wait_for("a failed redelivery", W, || {
        p.metric(&redeliveries("failed")) >= 1.0
    });
    p.deliver(&body).assert_error(409, "delivery_in_progress");
    assert!(up.accepted_ids().is_empty());

    up.set_status(200);
    wait_accepted(&up, std::slice::from_ref(&id), W);
    p.wait_for_metric(&redeliveries("delivered"), 1.0);
    // Persona's retry afterwards: a duplicate; the app took it once.
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(accepted_counts(&up)[&id], 1);
    wait_for("the route's stream to empty", W, || {
        xlen(&redis, STREAM) == Some(0)
    });
    assert_eq!(p.metric(&spool_series("depth")), 0.0);
}

#[test]
fn a_replica_killed_mid_redelivery_is_taken_over_by_the_other() {
    const EVENTS: usize = 30;
    let redis = RedisServer::start();
    let mut up = Upstream::start();
    let secret = secret();
    let make = || {
        on_redis(
            Proxy::builder().upstream(&up).secrets(vec![secret.clone()]),
            &redis,
        )
        .set("replay.inflight_ttl", "2s")
        .start()
    };
    let mut a = make();
    // B runs (and reads the group) before anything is spooled and before the kill.
    let b = make();
    up.stop();
    let ids: Vec<String> = (0..EVENTS).map(|_| event_id()).collect();
    for id in &ids {
        a.deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(202, "spooled");
    }
    assert_eq!(xlen(&redis, STREAM), Some(EVENTS as i64));
    // Back, but slow: redeliveries are in the app's hands when A dies.
    up.set_delay(Duration::from_millis(300));
    up.restart();
    wait_for(
        "the app to take some redeliveries",
        Duration::from_secs(10),
        || up.count() >= 5,
    );
    // A's own connections to the app (B may hold some too).
    let a_conns = connections_to(a.pid(), up.addr);
    kill("KILL", a.pid());
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    let killed_at = Instant::now();
    // What the app had received (and will answer 2xx) before the kill:
    // requests A wrote before it died may still sit in the app's socket
    // buffers, so first the app reads them (B takes nothing of A's for 2 s).
    up.wait_closed(&a_conns);
    let taken_before: HashSet<String> = up.accepted_ids().into_iter().collect();
    up.set_delay(Duration::ZERO);
    // B takes A's entries over once they were idle for inflight_ttl.
    wait_for("B to empty the stream", Duration::from_secs(20), || {
        xlen(&redis, STREAM) == Some(0)
    });
    let finished_in = killed_at.elapsed();
    wait_accepted(&up, &ids, W);
    let counts = accepted_counts(&up);
    let twice: Vec<&String> = ids.iter().filter(|id| counts[*id] > 1).collect();
    for id in &twice {
        assert!(
            taken_before.contains(*id),
            "{id} came twice but the app had not received it before the kill"
        );
        assert_eq!(counts[*id], 2, "{id}");
    }
    assert_eq!(counts.len(), EVENTS, "{counts:?}");
    eprintln!(
        "redis spool, kill -9 of replica A mid-redelivery: {EVENTS} events, {} received by the app before the kill, {} delivered twice, B delivered {} ({} duplicates found), stream empty {finished_in:?} after the kill",
        taken_before.len(),
        twice.len(),
        b.metric(&redeliveries("delivered")),
        b.metric(&redeliveries("duplicate")),
    );
}

#[test]
fn redis_down_is_answered_as_without_a_spool_and_nothing_spooled_is_lost() {
    let mut redis = RedisServer::start_persistent();
    // inflight_ttl is also the idle time after which an entry whose take
    // lost its reply (Redis killed mid-call) is taken again.
    let (up, p) = rig_with(|b| on_redis(b, &redis).set("replay.inflight_ttl", "2s"));
    up.set_status(500);
    let kept = event_id();
    p.deliver(&event_body(&kept, "inquiry.approved"))
        .assert_status_json(202, "spooled");
    // Held by the worker (taken, tried, failed) when Redis goes down.
    wait_for("a failed redelivery", W, || {
        p.metric(&redeliveries("failed")) >= 1.0
    });
    redis.stop();
    // The claim fails first: with on_store_error = "reject", 503 and nothing
    // forwarded; Persona retries later.
    let before = up.count();
    let refused = event_id();
    let body = event_body(&refused, "inquiry.approved");
    p.deliver(&body)
        .assert_error(503, "replay_store_unavailable");
    assert_eq!(up.count(), before, "forwarded without a claim");

    redis.restart();
    up.set_status(200);
    // Spooled before the stop: delivered once Redis and the app are back.
    if !wait_until(Duration::from_secs(15), || {
        up.accepted_ids().contains(&kept)
    }) {
        panic!(
            "spooled before Redis stopped, not delivered after it came back (XLEN {:?})\n{}",
            xlen(&redis, STREAM),
            p.logs()
        );
    }
    // Persona's retry of the refused one goes through now.
    assert_eq!(p.deliver(&body).status, 200);
    wait_for("the stream to empty", W, || xlen(&redis, STREAM) == Some(0));
    let counts = accepted_counts(&up);
    assert_eq!((counts[&kept], counts[&refused]), (1, 1), "{counts:?}");
}

#[test]
fn a_full_redis_spool_answers_with_the_apps_status() {
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| on_redis(b, &redis).set("spool.max_bytes", "1KiB"));
    up.set_status(500);
    let id = event_id();
    let body = big_event_body(&id, "inquiry.approved", 4096);
    let r = p.deliver(&body);
    assert_eq!(r.status, 500, "the app's answer: {}", r.text());
    assert_eq!(r.header("x-e2e-upstream"), Some("yes"));
    assert_eq!(p.metric(&fallbacks("full")), 1.0);
    assert_eq!(xlen(&redis, STREAM).unwrap_or(0), 0);
    // The claim was released: Persona's retry reaches the recovered app.
    up.set_status(200);
    assert_eq!(p.deliver(&body).status, 200);
    assert_eq!(accepted_counts(&up)[&id], 1);
}

#[test]
fn dead_letters_on_redis_are_listed_and_delivered_on_retry() {
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| on_redis(b, &redis).set("spool.max_age", "2s"));
    up.set_status(500);
    let id = event_id();
    p.deliver(&event_body(&id, "inquiry.failed"))
        .assert_status_json(202, "spooled");
    wait_for("a dead letter", Duration::from_secs(10), || {
        p.metric(&spool_series("dead_letters")) == 1.0
    });
    assert_eq!(xlen(&redis, DEAD), Some(1));
    assert_eq!(xlen(&redis, STREAM), Some(0));
    let listed = p.admin_get("/spool").json();
    let route = &listed["routes"][0];
    assert_eq!(route["route"], ROUTE);
    assert_eq!(route["dead_letters"], 1);
    assert_eq!(route["dead"][0]["event_id"], id.as_str(), "{listed}");
    // The paged listing reads the same dead letter from the stream.
    let page = p
        .admin_get(&format!("/spool/dead?route={ROUTE}&limit=1"))
        .json();
    assert_eq!(page["dead"][0]["event_id"], id.as_str(), "{page}");
    assert_eq!(page["next"], serde_json::Value::Null);

    up.set_status(200);
    let r = p.admin_request("POST", &format!("/spool/retry?id={id}"));
    assert_eq!(
        (r.status, r.json()["retried"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    wait_accepted(&up, std::slice::from_ref(&id), W);
    wait_for("the dead letter gone and the stream empty", W, || {
        xlen(&redis, DEAD) == Some(0) && xlen(&redis, STREAM) == Some(0)
    });
    assert_eq!(accepted_counts(&up)[&id], 1);
    assert_eq!(p.metric(&spool_series("dead_letters")), 0.0);
}

#[test]
fn a_spool_key_keeps_bodies_sealed_in_redis() {
    let redis = RedisServer::start();
    let key = "8f3a".repeat(16);
    let (mut up, p) = rig_with(|b| {
        on_redis(b, &redis)
            .set("spool.key", "env:SPOOL_KEY")
            .env("SPOOL_KEY", &key)
    });
    up.stop();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    p.deliver(&body).assert_status_json(202, "spooled");
    assert_eq!(xlen(&redis, STREAM), Some(1));
    let raw = xrange_raw(&redis, STREAM);
    assert!(raw.len() > body.len(), "the whole entry was read");
    assert!(!contains(&raw, id.as_bytes()), "the event id in clear");
    assert!(!contains(&raw, b"Jane"), "the body in clear");
    assert!(
        !contains(&raw, b"inquiry.approved"),
        "the event type in clear"
    );

    up.restart();
    wait_accepted(&up, std::slice::from_ref(&id), W);
    let got: Vec<Recorded> = up
        .requests()
        .into_iter()
        .filter(|r| r.header("x-persona-event-id") == Some(id.as_str()))
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, body, "the body byte for byte");
}

/// While an entry waits, Persona's retries are refused 409, also the ones
/// that arrive while the worker adopts the entry's mark (right after the 202:
/// the worker is woken by the put). `replay::adopt` takes the mark over in
/// one atomic step; before, it released the mark and claimed it anew in two
/// calls, and a retry landing in between was claimed, forwarded to the app
/// (500 here) and spooled a second time (202).
#[test]
fn a_retry_racing_the_spools_adoption_is_refused() {
    const EVENTS: usize = 20;
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| on_redis(b, &redis));
    up.set_status(500);
    let mut answers = Vec::new();
    for _ in 0..EVENTS {
        let body = event_body(&event_id(), "inquiry.approved");
        p.deliver(&body).assert_status_json(202, "spooled");
        for _ in 0..5 {
            let r = p.deliver(&body);
            answers.push((r.status, r.text()));
        }
    }
    let not_409: Vec<_> = answers.iter().filter(|(s, _)| *s != 409).collect();
    eprintln!(
        "retries racing the adoption: {} of {} answered other than 409: {:?}",
        not_409.len(),
        answers.len(),
        not_409.iter().take(3).collect::<Vec<_>>()
    );
    assert!(not_409.is_empty(), "{not_409:?}");
}

/// A Redis password rotated, then SIGHUP with the new one: the spool's own
/// client follows as the replay store's does. The entry spooled before the
/// rotation is still delivered once, and a new failure is spooled again.
/// (Before, the spool kept the client it started with, so after the
/// rotation every take, keep and put failed until a restart.)
#[test]
fn a_rotated_redis_password_reaches_the_spool_on_sighup() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, "first-password\n").unwrap();
    redis.require_password("first-password");
    let (up, p) = rig_with(|b| {
        on_redis(b, &redis)
            .set(
                "replay.redis_password",
                format!("file:{}", pw_file.display()),
            )
            .set("replay.on_store_error", "reject")
    });
    up.set_status(500);
    let before_rotation = event_id();
    p.deliver(&event_body(&before_rotation, "inquiry.approved"))
        .assert_status_json(202, "spooled");
    wait_for("a failed redelivery", W, || {
        p.metric(&redeliveries("failed")) >= 1.0
    });

    // Redis wants the new password and drops every connection.
    redis.rotate_password("first-password", "second-password");

    std::fs::write(&pw_file, "second-password\n").unwrap();
    let before = p.stderr();
    p.reload_ok();
    let log = p.stderr()[before.len()..].to_string();
    assert!(
        log.contains("the delivery spool's Redis client rebuilt"),
        "{log}"
    );
    assert!(!log.contains("needs a restart"), "{log}");
    assert!(
        !log.contains("second-password"),
        "the password is never logged"
    );

    // A new failure is spooled through the new client (202, in the stream).
    let after_rotation = event_id();
    p.deliver(&event_body(&after_rotation, "inquiry.approved"))
        .assert_status_json(202, "spooled");
    up.set_status(200);
    if !wait_until(W, || {
        let got = up.accepted_ids();
        got.contains(&before_rotation) && got.contains(&after_rotation)
    }) {
        panic!("not delivered; proxy log:\n{}", p.stderr());
    }
    let counts = accepted_counts(&up);
    assert_eq!(counts[&before_rotation], 1);
    assert_eq!(counts[&after_rotation], 1);
    let stream_len = || {
        redis
            .command_as("second-password", &["XLEN", STREAM])
            .and_then(|r| String::from_utf8(r).ok())
    };
    wait_for("the route's stream to empty", W, || {
        stream_len().is_some_and(|r| r.trim() == ":0")
    });
}
