//! The delivery spool (`docs/behaviour.md` § Delivery spool): a route with
//! `spool = "on_failure"` or `"always"` answers `202 {"status":"spooled"}`
//! once a delivery is durable and redelivers it until the app answers 2xx,
//! never twice, never lost; a full or unwritable spool answers as if there
//! were none; dead letters wait for an operator.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The proxy's configuration with the embedded spool in `dir` and the
/// first route set to `mode`.
pub fn spooling(b: ProxyBuilder, dir: &Path, mode: &str) -> ProxyBuilder {
    b.set("spool.dir", dir.to_str().expect("a UTF-8 temp path"))
        .route(|r| r.set("spool", mode))
}

pub(crate) fn spool_series(name: &str) -> String {
    format!("persona_guard_spool_{name}{{route=\"{ROUTE}\"}}")
}

pub(crate) fn redeliveries(result: &str) -> String {
    format!("persona_guard_spool_redeliveries_total{{result=\"{result}\",route=\"{ROUTE}\"}}")
}

pub(crate) fn fallbacks(reason: &str) -> String {
    format!("persona_guard_spool_fallbacks_total{{reason=\"{reason}\",route=\"{ROUTE}\"}}")
}

/// Waits until the app has accepted (answered 2xx) every id of `ids`.
pub(crate) fn wait_accepted(up: &Upstream, ids: &[String], within: Duration) {
    let want: HashSet<&String> = ids.iter().collect();
    let ok = wait_until(within, || {
        let got = up.accepted_ids();
        want.iter().all(|id| got.contains(id))
    });
    if !ok {
        let got: HashSet<String> = up.accepted_ids().into_iter().collect();
        let missing: Vec<_> = want.iter().filter(|id| !got.contains(**id)).collect();
        panic!("not accepted by the app within {within:?}: {missing:?}");
    }
}

/// How often the app accepted each id.
pub(crate) fn accepted_counts(up: &Upstream) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for id in up.accepted_ids() {
        *n.entry(id).or_default() += 1;
    }
    n
}

#[test]
fn on_failure_a_5xx_is_spooled_and_redelivered_once_the_app_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.set_status(500);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    p.deliver(&body).assert_status_json(202, "spooled");
    // Counted once the answer is sent, which may be just after the client read it.
    p.wait_for_outcome(ROUTE, "spooled", 1);
    // Persona's re-signed retry while the entry waits: in flight, not a second copy.
    p.deliver(&body).assert_error(409, "delivery_in_progress");

    up.set_status(200);
    wait_accepted(&up, std::slice::from_ref(&id), Duration::from_secs(10));
    p.wait_for_metric(&redeliveries("delivered"), 1.0);
    wait_for("the spool to empty", W, || {
        p.metric(&spool_series("depth")) == 0.0
    });
    // The same request as the first forward: method, target, body byte for
    // byte, Persona's headers and the trusted ones.
    let all = up.requests();
    let first = &all[0];
    let again = all.last().unwrap();
    assert_eq!(again.method, "POST");
    assert_eq!(again.target, first.target);
    assert_eq!(again.body, body);
    assert_eq!(again.headers, first.headers);
    assert_eq!(again.header("x-persona-event-id"), Some(id.as_str()));
    assert_eq!(
        again.header("x-persona-event-type"),
        Some("inquiry.approved")
    );
    // Delivered: Persona's later retry is a duplicate, and the app saw it once.
    p.deliver(&body).assert_status_json(200, "duplicate");
    assert_eq!(accepted_counts(&up)[&id], 1);
}

#[test]
fn on_failure_an_app_that_is_down_gets_the_event_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.stop();
    let ids: Vec<String> = (0..5).map(|_| event_id()).collect();
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.completed"))
            .assert_status_json(202, "spooled");
    }
    assert_eq!(p.metric(&spool_series("depth")), 5.0);
    up.restart();
    wait_accepted(&up, &ids, Duration::from_secs(10));
    let counts = accepted_counts(&up);
    for id in &ids {
        assert_eq!(counts[id], 1, "{id} accepted {} times", counts[id]);
    }
}

#[test]
fn on_failure_408_and_429_spool_other_4xx_are_the_apps_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    for status in [408, 429, 503] {
        up.set_status(status);
        p.deliver(&event_body(&event_id(), "inquiry.approved"))
            .assert_status_json(202, "spooled");
    }
    up.set_status(400);
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let r = p.deliver(&body);
    assert_eq!(r.status, 400, "a 400 is the app's refusal: {}", r.text());
    assert_eq!(r.header("x-e2e-upstream"), Some("yes"));
    // Not spooled and not held: Persona's retry is forwarded again.
    up.set_status(200);
    assert_eq!(p.deliver(&body).status, 200);
    assert_eq!(accepted_counts(&up)[&id], 1);
}

#[test]
fn always_answers_at_once_while_the_app_is_slow_and_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) =
        rig_with(|b| spooling(b, dir.path(), "always").set("upstream.read_timeout", "20s"));
    // Slower than Persona's 5-second deadline.
    up.set_delay(Duration::from_secs(6));
    let ids: Vec<String> = (0..3).map(|_| event_id()).collect();
    for id in &ids {
        let sent = Instant::now();
        p.deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(202, "spooled");
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "spool = \"always\" answered after {:?}, past Persona's deadline",
            sent.elapsed()
        );
    }
    wait_accepted(&up, &ids, Duration::from_secs(30));
    p.wait_for_metric(&redeliveries("delivered"), 3.0);
    let counts = accepted_counts(&up);
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
    // Persona's retries of the delivered events are duplicates.
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(200, "duplicate");
    }
}

#[test]
fn a_full_spool_answers_with_the_apps_status_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) =
        rig_with(|b| spooling(b, dir.path(), "on_failure").set("spool.max_bytes", "1KiB"));
    up.set_status(500);
    let id = event_id();
    let body = big_event_body(&id, "inquiry.approved", 4096);
    let r = p.deliver(&body);
    assert_eq!(r.status, 500, "the app's answer: {}", r.text());
    assert_eq!(r.header("x-e2e-upstream"), Some("yes"));
    assert_eq!(p.metric(&fallbacks("full")), 1.0);
    assert_eq!(p.metric(&spool_series("depth")), 0.0);
    assert!(
        p.logs().contains("cannot keep the delivery"),
        "{}",
        p.logs()
    );
    // The claim was released: Persona's retry reaches the recovered app.
    up.set_status(200);
    assert_eq!(p.deliver(&body).status, 200);
    assert_eq!(accepted_counts(&up)[&id], 1);
}

#[test]
fn an_unwritable_spool_answers_502_and_persona_retries_later() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (mut up, p) = rig_with(|b| spooling(b, &spool_dir, "on_failure"));
    // The spool's directory replaced by a file: no entry can be written
    // there, whoever the proxy runs as (root ignores permission bits).
    std::fs::remove_dir_all(&spool_dir).unwrap();
    std::fs::write(&spool_dir, b"not a directory").unwrap();
    up.stop();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    p.deliver(&body).assert_error(502, "upstream_unavailable");
    assert_eq!(p.metric(&fallbacks("unavailable")), 1.0);
    up.restart();
    assert_eq!(p.deliver(&body).status, 200);
    assert_eq!(accepted_counts(&up)[&id], 1);
}

#[test]
fn dead_letters_are_kept_listed_and_delivered_when_an_operator_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure").set("spool.max_age", "2s"));
    up.set_status(500);
    let (kept, dropped) = (event_id(), event_id());
    for id in [&kept, &dropped] {
        p.deliver(&event_body(id, "inquiry.failed"))
            .assert_status_json(202, "spooled");
    }
    wait_for("two dead letters", Duration::from_secs(15), || {
        p.metric(&spool_series("dead_letters")) == 2.0
    });
    assert_eq!(p.metric(&spool_series("depth")), 0.0);
    assert_eq!(p.metric(&redeliveries("dead")), 2.0);
    assert!(p.logs().contains("dead letter"), "{}", p.logs());
    let listed = p.admin_get("/spool").json();
    let route = &listed["routes"][0];
    assert_eq!(route["route"], ROUTE);
    assert_eq!(route["dead_letters"], 2);
    let dead_ids: HashSet<&str> = route["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(dead_ids, HashSet::from([kept.as_str(), dropped.as_str()]));

    // A dead letter is not redelivered by itself, even to a fixed app.
    up.set_status(200);
    let before = up.count();
    // A negative: the window is the check.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        up.count(),
        before,
        "a dead letter was redelivered by itself"
    );
    let r = p.admin_request("POST", &format!("/spool/retry?id={kept}"));
    assert_eq!(
        (r.status, r.json()["retried"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    wait_accepted(&up, std::slice::from_ref(&kept), Duration::from_secs(10));
    assert_eq!(up.count(), before + 1);

    let r = p.admin_request("DELETE", &format!("/spool/dead?id={dropped}"));
    assert_eq!(
        (r.status, r.json()["deleted"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    assert_eq!(
        p.admin_request("DELETE", &format!("/spool/dead?id={dropped}"))
            .status,
        404
    );
    assert_eq!(
        p.admin_request("POST", "/spool/retry?id=evt_unknown")
            .status,
        404
    );
    wait_for("no dead letters left", W, || {
        p.metric(&spool_series("dead_letters")) == 0.0
    });
    assert!(!up.accepted_ids().contains(&dropped));
}

#[test]
fn sigterm_leaves_the_spool_and_the_next_process_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, mut p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.stop();
    let ids: Vec<String> = (0..5).map(|_| event_id()).collect();
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(202, "spooled");
    }
    let st = p
        .terminate(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    up.restart();
    let p2 = spooling(Proxy::builder().upstream(&up), dir.path(), "on_failure").start();
    wait_accepted(&up, &ids, Duration::from_secs(15));
    let counts = accepted_counts(&up);
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
    wait_for("the spool to empty", W, || {
        p2.metric(&spool_series("depth")) == 0.0
    });
}

#[test]
fn kill_9_while_redelivering_loses_nothing_and_repeats_only_what_the_app_had_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, mut p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.stop();
    let ids: Vec<String> = (0..40).map(|_| event_id()).collect();
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.approved"))
            .assert_status_json(202, "spooled");
    }
    // Back, but slow: redeliveries are in the app's hands when the proxy dies.
    up.set_delay(Duration::from_millis(400));
    up.restart();
    wait_for(
        "the app to take some redeliveries",
        Duration::from_secs(15),
        || up.count() >= 5,
    );
    let conns = connections_to(p.pid(), up.addr);
    assert!(
        !conns.is_empty(),
        "redeliveries in the app's hands, but no connection to it"
    );
    kill("KILL", p.pid());
    p.wait_exit(Duration::from_secs(5)).expect("killed");
    // What the dead process wrote may still sit in the app's socket buffers.
    up.wait_closed(&conns);
    let taken_before: HashSet<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.header("x-persona-event-id").map(str::to_string))
        .collect();
    up.set_delay(Duration::ZERO);
    let _p2 = spooling(Proxy::builder().upstream(&up), dir.path(), "on_failure").start();
    wait_accepted(&up, &ids, Duration::from_secs(30));
    let counts = accepted_counts(&up);
    let twice: Vec<&String> = ids.iter().filter(|id| counts[*id] > 1).collect();
    // The documented window: only an event the app had taken before the
    // kill (its 2xx not yet recorded as delivered) may come again, once.
    for id in &twice {
        assert!(
            taken_before.contains(*id),
            "{id} came twice but the app had not taken it before the kill"
        );
        assert_eq!(counts[*id], 2, "{id}");
    }
    eprintln!(
        "kill -9 mid-redelivery: {} events, {} taken by the app before the kill, {} delivered twice",
        ids.len(),
        taken_before.len(),
        twice.len()
    );
}

/// Persona as the spool meets it: 200 events over 20 s while the app is down,
/// each from a client that re-signs and retries on anything but 2xx.
#[test]
fn an_outage_of_20_s_with_200_events_from_a_retrying_persona() {
    const EVENTS: usize = 200;
    const OUTAGE: Duration = Duration::from_secs(20);
    let dir = tempfile::tempdir().unwrap();
    let (mut up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.stop();
    let down_at = Instant::now();
    let ids: Vec<String> = (0..EVENTS).map(|_| event_id()).collect();
    let (listen, secret) = (p.listen, p.secret().to_string());
    let senders: Vec<_> = ids
        .chunks(EVENTS / 4)
        .map(|chunk| {
            let (chunk, secret) = (chunk.to_vec(), secret.clone());
            std::thread::spawn(move || {
                let gap = (OUTAGE - Duration::from_secs(2)) / chunk.len() as u32;
                let mut slowest = Duration::ZERO;
                for id in chunk {
                    let body = event_body(&id, "inquiry.approved");
                    // Persona: up to 8 attempts, re-signed each time.
                    for attempt in 0..8 {
                        let sent = Instant::now();
                        let raw = delivery(ROUTE, &sign(&secret, now(), &body), &body);
                        let r = one_shot(listen, &raw);
                        slowest = slowest.max(sent.elapsed());
                        if (200..300).contains(&r.status) {
                            assert_eq!(r.status, 202, "{id}: {}", r.text());
                            break;
                        }
                        assert!(
                            attempt < 7,
                            "{id}: never accepted, last {} {}",
                            r.status,
                            r.text()
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    std::thread::sleep(gap);
                }
                slowest
            })
        })
        .collect();
    let slowest = senders
        .into_iter()
        .map(|s| s.join().expect("a sender"))
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_secs(5),
        "an answer took {slowest:?}, past Persona's 5-second deadline"
    );
    if let Some(rest) = OUTAGE.checked_sub(down_at.elapsed()) {
        std::thread::sleep(rest);
    }
    up.restart();
    let back = Instant::now();
    wait_accepted(&up, &ids, Duration::from_secs(90));
    let recovered_in = back.elapsed();
    let counts = accepted_counts(&up);
    assert!(
        ids.iter().all(|id| counts[id] == 1),
        "an event was accepted twice"
    );
    assert_eq!(counts.len(), EVENTS);
    eprintln!(
        "outage of {OUTAGE:?}, {EVENTS} events: slowest answer {slowest:?}, recovery to last delivery {recovered_in:?}"
    );
}

/// Every byte of every file under `dir`.
fn files_under(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_sealed_spool_holds_no_readable_body_and_still_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = "7f".repeat(32);
    let (mut up, p) = rig_with(|b| {
        spooling(b, dir.path(), "on_failure")
            .set("spool.key", "env:PERSONA_GUARD_SPOOL_KEY")
            .env("PERSONA_GUARD_SPOOL_KEY", &key)
    });
    up.stop();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    p.deliver(&body).assert_status_json(202, "spooled");
    let files = files_under(dir.path());
    assert!(!files.is_empty(), "the spool wrote no file");
    // The positive control: the needles are in the plaintext body.
    assert!(contains(&body, id.as_bytes()) && contains(&body, b"Jane"));
    for f in &files {
        assert!(
            !contains(f, id.as_bytes()),
            "an event id in a sealed spool file"
        );
        assert!(
            !contains(f, b"Jane"),
            "personal data in a sealed spool file"
        );
    }
    up.restart();
    wait_accepted(&up, std::slice::from_ref(&id), Duration::from_secs(10));
    let got = up.requests();
    assert_eq!(got.last().unwrap().body, body);
    assert!(!p.logs().contains(&key), "the key reached the logs");
}

#[test]
fn a_reload_cannot_start_spooling_in_a_process_started_without_a_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig();
    p.edit_config(|b| spooling(b, dir.path(), "on_failure"));
    p.reload_ok();
    assert!(p.logs().contains("needs a restart"), "{}", p.logs());
    up.set_status(500);
    let r = p.deliver(&event_body(&event_id(), "inquiry.approved"));
    assert_eq!(r.status, 500, "answered as spool = \"off\": {}", r.text());
    assert_eq!(p.admin_get("/spool").status, 404);
}

#[test]
fn a_route_turned_off_by_a_reload_still_delivers_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    up.set_status(500);
    let id = event_id();
    p.deliver(&event_body(&id, "inquiry.approved"))
        .assert_status_json(202, "spooled");
    p.edit_config(|b| spooling(b, dir.path(), "off"));
    p.reload_ok();
    // Off now: a new failure is the app's answer...
    let r = p.deliver(&event_body(&event_id(), "inquiry.approved"));
    assert_eq!(r.status, 500, "{}", r.text());
    // ...and what the spool held still reaches the app once it is back.
    up.set_status(200);
    wait_accepted(&up, std::slice::from_ref(&id), Duration::from_secs(10));
    assert_eq!(accepted_counts(&up)[&id], 1);
}

/// `GET /spool/dead` pages one route's dead letters: `limit` at a time,
/// oldest first, `next` naming where the following page starts; the pages
/// together are every dead letter once. Bad queries are refused by name.
#[test]
fn dead_letters_are_listed_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure").set("spool.max_age", "1s"));
    up.set_status(500);
    let ids: Vec<String> = (0..3).map(|_| event_id()).collect();
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.failed"))
            .assert_status_json(202, "spooled");
    }
    wait_for("three dead letters", Duration::from_secs(15), || {
        p.metric(&spool_series("dead_letters")) == 3.0
    });
    // The overview lists all three (under its 100), so it has no next page.
    let overview = p.admin_get("/spool").json();
    assert_eq!(overview["routes"][0]["dead_next"], serde_json::Value::Null);

    let page = |query: &str| p.admin_get(&format!("/spool/dead?route={ROUTE}{query}"));
    let first = page("&limit=2");
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["dead_letters"], 3);
    assert_eq!(first["dead"].as_array().unwrap().len(), 2);
    let next = first["next"].as_str().expect("a next page").to_string();
    assert_eq!(first["dead"][1]["id"], next.as_str());
    let second = page(&format!("&limit=2&after={next}")).json();
    assert_eq!(second["dead"].as_array().unwrap().len(), 1);
    assert_eq!(second["next"], serde_json::Value::Null);
    let listed: Vec<&str> = first["dead"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["dead"].as_array().unwrap())
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "each dead letter once: {listed:?}");
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(sorted, want);
    // No body, no head in the listing.
    assert!(!first.to_string().contains("Jane"), "{first}");

    for (query, status, error) in [
        ("/spool/dead", 400, "missing_route"),
        ("/spool/dead?route=/nowhere", 404, "unknown_route"),
        (
            &format!("/spool/dead?route={ROUTE}&limit=0"),
            400,
            "bad_limit",
        ),
        (
            &format!("/spool/dead?route={ROUTE}&after=1-1"),
            404,
            "not_found",
        ),
    ] {
        p.admin_get(query).assert_error(status, error);
    }
}
