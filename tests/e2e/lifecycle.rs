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

#[test]
fn sigterm_exits_zero() {
    let (_up, mut p) = rig();
    assert_eq!(
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .status,
        200
    );
    let st = p
        .terminate(Duration::from_secs(15))
        .expect("exits within 15 s of SIGTERM");
    assert!(st.success(), "exit status {st:?}; stderr {}", p.stderr());
}

#[test]
fn sigterm_lets_a_slow_delivery_finish_then_exits_zero() {
    let (up, mut p) = rig_with(|b| b.set("server.grace_period", "10s"));
    up.set_delay(Duration::from_millis(1500));
    let body = event_body(&event_id(), "inquiry.approved");
    let raw = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let listen = p.listen;
    let in_flight = thread::spawn(move || one_shot(listen, &raw));
    assert!(
        wait_until(W, || up.heads() == 1),
        "the delivery reached the app"
    );

    let sent = Instant::now();
    p.signal("TERM");
    // New connections are refused while the delivery is still in flight.
    assert!(
        wait_until(Duration::from_secs(1), || TcpStream::connect_timeout(
            &listen,
            Duration::from_millis(100)
        )
        .is_err()),
        "the listener still accepts after SIGTERM"
    );
    let r = in_flight.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight delivery completes: {}",
        r.text()
    );
    let st = p.terminate(Duration::from_secs(15)).expect("exits");
    let took = sent.elapsed();
    assert!(st.success(), "{st:?}");
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?}, beyond the grace period"
    );
}
