//! The process's life: SIGHUP reloads, SIGTERM drains, SIGINT stops; with and
//! without deliveries in flight.

use std::fs;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn sighup_rotates_a_file_secret_adds_a_route_and_refuses_an_invalid_file() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secret_file = secrets_dir.path().join("webhook-secret");
    let file_secret = vec![format!("file:{}", secret_file.display())];
    let old = secret();
    let new = secret();
    fs::write(&secret_file, format!("{old}\n")).unwrap();
    let (up, p) =
        rig_with(|b| b.add_route("/hooks/file", |r| r.set("secrets", file_secret.clone())));
    let deliver_to = |path: &str, secret: &str, body: &[u8]| p.deliver_to(path, secret, body);

    let first = event_body(&event_id(), "inquiry.approved");
    assert_eq!(deliver_to("/hooks/file", &old, &first).status, 200);
    // Not a route yet: forwarded as is.
    assert_eq!(p.post("/hooks/added", &[], b"unsigned").status, 200);
    assert_eq!(up.wait_for_requests(2, W).len(), 2);

    // Rotate the mounted secret in place and add a route.
    fs::write(&secret_file, format!("{new}\n")).unwrap();
    p.edit_config(|b| b.add_route("/hooks/added", |r| r.set("secrets", file_secret.clone())));
    p.reload_ok();

    let second = event_body(&event_id(), "inquiry.approved");
    assert_eq!(
        deliver_to("/hooks/file", &new, &second).status,
        200,
        "new secret accepted"
    );
    deliver_to(
        "/hooks/file",
        &old,
        &event_body(&event_id(), "inquiry.approved"),
    )
    .assert_error(401, "invalid_signature");
    deliver_to("/hooks/file", &new, &first).assert_status_json(200, "duplicate");
    p.post("/hooks/added", &[], b"unsigned")
        .assert_error(401, "missing_signature");
    assert_eq!(
        deliver_to(
            "/hooks/added",
            &new,
            &event_body(&event_id(), "inquiry.approved")
        )
        .status,
        200
    );

    // An invalid file is refused; the running configuration keeps serving.
    fs::write(
        &p.config,
        "[[route]]\npath = \"/x\"\nsecrets = [\"env:NOT_SET_ANYWHERE\"]\n",
    )
    .unwrap();
    p.reload_refused();
    assert!(p.stderr().contains("reload refused"), "{}", p.stderr());
    assert!(
        p.stderr().contains("NOT_SET_ANYWHERE"),
        "the log names the problem"
    );
    assert_eq!(
        deliver_to(
            "/hooks/added",
            &new,
            &event_body(&event_id(), "inquiry.approved")
        )
        .status,
        200
    );
    p.post(ROUTE, &[], b"{}")
        .assert_error(401, "missing_signature");
}

/// Sends a genuine delivery of `body` from another thread; its answer, or
/// why there was none.
fn deliver_in_background(p: &Proxy, body: &[u8]) -> thread::JoinHandle<Result<Response, String>> {
    let raw = delivery(ROUTE, &sign(p.secret(), now(), body), body);
    let listen = p.listen;
    thread::spawn(move || {
        let mut c = Client::connect(listen);
        c.send(&raw);
        c.try_read_response()
    })
}

/// On `sig`, a proxy with nothing in flight (one idle keep-alive connection
/// open) exits 0 well before its 10 s grace period.
/// The held delivery's client got no answer (the connection closed) or a
/// non-2xx one: never a success from a proxy that stopped.
fn assert_not_2xx(in_flight: thread::JoinHandle<Result<Response, String>>, when: &str) {
    if let Ok(r) = in_flight.join().unwrap() {
        assert!(
            !(200..300).contains(&r.status),
            "the held delivery was answered {} {} {when}",
            r.status,
            r.text()
        );
    }
}

fn exits_promptly_on(sig: &str) {
    let (up, mut p) = rig_with(|b| b.set("server.grace_period", "10s"));
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );
    // An idle keep-alive connection is not a request in flight.
    let mut idle = p.client();
    assert_eq!(idle.request(&request("GET", "/app", &[], b"")).status, 200);
    assert_eq!(up.count(), 2);
    let sent = Instant::now();
    let st = p
        .stop_with(sig, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit within 15 s of SIG{sig}"));
    let took = sent.elapsed();
    assert!(
        st.success(),
        "SIG{sig}: exit status {st:?}; stderr {}",
        p.stderr()
    );
    assert!(
        took < Duration::from_secs(3),
        "SIG{sig} with nothing in flight: exited after {took:?}, not well before the 10 s grace period\nstderr:\n{}",
        p.stderr()
    );
}

#[test]
fn sigterm_with_nothing_in_flight_exits_zero_at_once() {
    exits_promptly_on("TERM");
}

#[test]
fn sigint_with_nothing_in_flight_exits_zero_at_once() {
    exits_promptly_on("INT");
}

#[test]
fn sigterm_lets_a_slow_delivery_finish_then_exits_zero() {
    let (up, mut p) = rig_with(|b| b.set("server.grace_period", "10s"));
    up.set_status(202);
    up.set_body(b"taken while draining");
    up.hold();
    let body = event_body(&event_id(), "inquiry.approved");
    let in_flight = deliver_in_background(&p, &body);
    wait_for("the delivery to reach the app", W, || up.heads() == 1);

    let sent = Instant::now();
    p.signal("TERM");
    // New connections are refused while the delivery is still in flight.
    let listen = p.listen;
    assert!(
        wait_until(Duration::from_secs(1), || TcpStream::connect_timeout(
            &listen,
            Duration::from_millis(100)
        )
        .is_err()),
        "the listener still accepts after SIGTERM"
    );
    assert_eq!(
        p.wait_exit(Duration::ZERO),
        None,
        "exited with a delivery in flight"
    );
    let released = Instant::now();
    up.release();
    let r = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the in-flight delivery got no answer: {e}"));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (202, &b"taken while draining"[..]),
        "the in-flight delivery completes with the app's answer: {}",
        r.text()
    );
    let st = p.wait_exit(Duration::from_secs(15)).expect("exits");
    let took = sent.elapsed();
    assert!(st.success(), "{st:?}");
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?}, beyond the grace period"
    );
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "exited {:?} after the last delivery ended: the drain waited for nothing",
        released.elapsed()
    );
    assert_eq!(up.count(), 1);
}

/// The twin of the drain above: SIGINT stops at once, in-flight delivery or not.
#[test]
fn sigint_with_a_delivery_in_flight_stops_at_once() {
    let (up, mut p) = rig_with(|b| b.set("server.grace_period", "10s"));
    up.hold();
    let in_flight = deliver_in_background(&p, &event_body(&event_id(), "inquiry.approved"));
    wait_for("the delivery to reach the app", W, || up.heads() == 1);
    let sent = Instant::now();
    let st = p
        .stop_with("INT", Duration::from_secs(15))
        .expect("exits within 15 s of SIGINT");
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "SIGINT with a delivery in flight: exited after {took:?}"
    );
    assert!(st.success(), "exit status {st:?}; stderr {}", p.stderr());
    assert_not_2xx(in_flight, "by a stopped proxy");
}

/// SIGTERM while the app holds a delivery longer than `grace_period`: the
/// process exits once the grace period is over, and the client is not told
/// the delivery succeeded (with the memory store, that is what is observable).
#[test]
fn sigterm_past_the_grace_period_exits_without_a_2xx() {
    let (up, mut p) = rig_with(|b| b.set("server.grace_period", "1s"));
    up.hold();
    let in_flight = deliver_in_background(&p, &event_body(&event_id(), "inquiry.approved"));
    wait_for("the delivery to reach the app", W, || up.heads() == 1);
    let sent = Instant::now();
    let st = p
        .stop_with("TERM", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM with grace_period 1s"));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}: the held delivery did not get its grace period"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM; grace_period is 1s"
    );
    assert!(st.success(), "exit status {st:?}; stderr {}", p.stderr());
    assert_not_2xx(in_flight, "after the grace period");
    assert_eq!(up.count(), 1);
}

/// With the Redis store the same: and the held event is not marked delivered,
/// so Persona's retry through a fresh proxy on the same Redis is forwarded
/// (once the dead proxy's in-flight lease has run out), not `duplicate`.
#[test]
fn sigterm_past_the_grace_period_leaves_the_held_event_undelivered_in_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let secret = secret();
    let proxy = || {
        Proxy::builder()
            .upstream(&up)
            .secrets(vec![secret.clone()])
            .redis(&redis.url())
            .set("server.grace_period", "1s")
            .set("upstream.read_timeout", "4s")
            .set("replay.inflight_ttl", "5s")
            .start()
    };
    let mut first = proxy();
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let in_flight = deliver_in_background(&first, &body);
    wait_for("the delivery to reach the app", W, || up.heads() == 1);
    let sent = Instant::now();
    let st = first
        .stop_with("TERM", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM with grace_period 1s"));
    let took = sent.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&took),
        "exited {took:?} after SIGTERM; grace_period is 1s"
    );
    assert!(
        st.success(),
        "exit status {st:?}; stderr {}",
        first.stderr()
    );
    if let Ok(r) = in_flight.join().unwrap() {
        assert!(
            !(200..300).contains(&r.status),
            "the held delivery was answered {} {}",
            r.status,
            r.text()
        );
    }
    // The app finishes with the old request: its answer goes nowhere.
    up.release();

    let second = proxy();
    let r = second.deliver_after_inflight(&body, Duration::from_secs(15));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, DEFAULT_UPSTREAM_BODY),
        "the retry after the exit must reach the app: {}",
        r.text()
    );
    let recs = up.wait_for_requests(2, W);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[1].header(TRUSTED_ID), Some(id.as_str()));
    // Now it is delivered.
    second.deliver(&body).assert_status_json(200, "duplicate");
}

/// A SIGHUP while the app holds a delivery: the new configuration takes effect
/// for new requests, the held delivery completes with the app's answer, is
/// forwarded once, and is remembered (its retry is `duplicate`).
#[test]
fn sighup_with_a_delivery_in_flight_lets_it_complete_and_remembers_it() {
    let (up, p) = rig();
    up.set_status(202);
    up.set_body(b"taken across the reload");
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let in_flight = deliver_in_background(&p, &body);
    wait_for("the delivery to reach the app", W, || up.heads() == 1);

    // A changed, valid file: an allow-list on the route and a new route.
    p.edit_config(|b| {
        b.route(|r| r.set("events", vec!["inquiry.*"]))
            .add_route("/hooks/added", |r| r)
    });
    p.reload_ok();
    p.post("/hooks/added", &[], b"{}")
        .assert_error(401, "missing_signature");
    p.deliver(&event_body(&event_id(), "account.created"))
        .assert_status_json(200, "ignored");
    assert!(
        !in_flight.is_finished(),
        "the held delivery ended during the reload"
    );

    up.release();
    let r = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the held delivery got no answer: {e}"));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (202, &b"taken across the reload"[..]),
        "{}",
        r.text()
    );
    p.deliver(&body).assert_status_json(200, "duplicate");
    for outcome in ["forwarded", "ignored", "duplicate"] {
        p.wait_for_outcome(ROUTE, outcome, 1);
    }
    up.assert_saw_once(&id, &body);
}

#[test]
fn sighup_names_each_restart_only_key_keeps_its_value_and_applies_the_rest() {
    let (up, p) = rig_with(|b| b.set("replay.capacity", 1000));
    let moved = format!("127.0.0.1:{}", free_port());
    let before = p.stderr();
    p.edit_config(|b| {
        b.set("listen.address", moved.clone())
            .set("server.threads", 3)
            .set("server.grace_period", "7s")
            .set("replay.capacity", 2000)
            .set("log_format", "json")
            .set("replay.store", "redis")
            .set("replay.redis_url", "redis://127.0.0.1:1/0")
            // Reloadable, in the same file: takes effect.
            .add_route("/hooks/added", |r| r)
    });
    p.reload_ok();
    let log = p.stderr()[before.len()..].to_string();
    for key in [
        "listen.address",
        "server.threads",
        "server.grace_period",
        "replay.capacity",
        "log_format",
        "replay.store",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains("needs a restart") && l.contains(&format!("\"{key}\"")))
            .unwrap_or_else(|| panic!("no restart warning names {key}:\n{log}"));
        assert!(line.contains("WARN"), "{line}");
    }
    assert_eq!(
        log.matches("needs a restart").count(),
        6,
        "one warning per changed restart-only key, no more:\n{log}"
    );
    // Still text logs, still the bound listener, still the memory store
    // (no Redis runs at that address), and the new route is judged.
    assert!(
        !log.contains("{\""),
        "log_format stays text until a restart"
    );
    assert!(
        TcpStream::connect(&moved).is_err(),
        "nothing bound at the new address"
    );
    let body = event_body(&event_id(), "inquiry.approved");
    assert_eq!(p.deliver(&body).status, 200);
    p.deliver(&body).assert_status_json(200, "duplicate");
    p.post("/hooks/added", &[], b"{}")
        .assert_error(401, "missing_signature");
    assert_eq!(up.count(), 1);
}

#[test]
fn sighup_with_only_reloadable_changes_warns_about_nothing() {
    let (_up, p) = rig();
    let before = p.stderr();
    p.edit_config(|b| {
        b.set("server.header_timeout", "3s")
            .set("replay.ttl", "20m")
            .add_route("/hooks/added", |r| r)
    });
    p.reload_ok();
    let log = p.stderr()[before.len()..].to_string();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(!log.contains("needs a restart"), "{log}");
}

/// A delivery in flight while the Redis password is rotated (Redis drops
/// every connection) and SIGHUP brings the new one: its 2xx is recorded
/// through the new client, so Persona's retry long after `inflight_ttl` is
/// still a duplicate. (Through the old client Redis refused the commit, the
/// in-flight mark expired, and that retry went to the app a second time.)
#[test]
fn a_delivery_in_flight_across_a_redis_password_rotation_is_remembered() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    fs::write(&pw_file, "first-password\n").unwrap();
    redis.require_password("first-password");
    let (up, p) = rig_with(|b| {
        b.redis(&redis.url())
            .set(
                "replay.redis_password",
                format!("file:{}", pw_file.display()),
            )
            .set("replay.inflight_ttl", "2s")
    });
    up.hold();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let in_flight = deliver_in_background(&p, &body);
    wait_for("the delivery to reach the app", W, || up.heads() == 1);

    redis.rotate_password("first-password", "second-password");
    fs::write(&pw_file, "second-password\n").unwrap();
    p.reload_ok();

    up.release();
    let r = in_flight.join().unwrap().expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    // Past the in-flight mark's life: only a delivered mark answers now.
    thread::sleep(Duration::from_secs(3));
    p.deliver(&body).assert_status_json(200, "duplicate");
    up.assert_saw_once(&id, &body);
}
