//! Reconciliation with Persona's Events API (the contract's §9), end to end:
//! the real binary against a fake of the API on loopback.

use std::time::Duration;

use serde_json::Value as Json;
use toml::{Table, Value};

use crate::harness::persona_api::{API_KEY, PersonaApi, api_event};
use crate::harness::*;

const NAME: &str = "inquiry.approved";

fn table(api: &PersonaApi, mode: &str) -> Value {
    let mut t = Table::new();
    t.insert("api_key".into(), "env:PERSONA_API_KEY".into());
    t.insert("api_base".into(), api.base().into());
    t.insert("mode".into(), mode.into());
    t.insert("interval".into(), "1s".into());
    t.insert("grace".into(), "1s".into());
    t.insert("window".into(), "10m".into());
    Value::Table(t)
}

fn proxy(
    up: &Upstream,
    api: &PersonaApi,
    mode: &str,
    f: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
) -> Proxy {
    f(Proxy::builder()
        .upstream(up)
        .env("PERSONA_API_KEY", API_KEY)
        .route(|r| r.set("reconcile", table(api, mode))))
    .start()
}

/// `GET /reconcile`'s first route once its last run is at least `after`.
fn last_run(p: &Proxy, after: i64) -> Json {
    poll(W, || {
        let r = p.admin_get("/reconcile").json();
        let run = r["routes"][0]["last_run"].clone();
        (run["at"].as_i64().unwrap_or(0) >= after).then_some(run)
    })
    .expect("a reconciliation run")
}

fn ids(run: &Json) -> Vec<String> {
    let mut v: Vec<String> = run["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn report_finds_exactly_the_events_that_never_reached_the_app() {
    let (up, api) = (Upstream::start(), PersonaApi::start());
    let p = proxy(&up, &api, "report", |b| {
        b.route(|r| r.set("events", vec![Value::from("inquiry.*")]))
    });
    let start = now();
    let (delivered, missing, before, other) = (event_id(), event_id(), event_id(), event_id());
    assert_eq!(p.deliver(&event_body(&delivered, NAME)).status, 200);
    api.set_events(vec![
        api_event(&delivered, NAME, start + 1),
        api_event(&missing, NAME, start + 1),
        // Before the memory store started: not judged.
        api_event(&before, NAME, start - 60),
        // Not accepted by the route.
        api_event(&other, "report.run.completed", start + 1),
        // Younger than grace when judged early; judged later.
    ]);
    std::thread::sleep(Duration::from_secs(3));
    let run = last_run(&p, now());
    assert_eq!(ids(&run), [missing], "{run}");
    assert!(run["error"].is_null(), "{run}");
    let r = p.admin_get("/reconcile").json();
    assert!(
        r["memory_store_judges_events_created_after"].is_string(),
        "{r}"
    );
    let route = "/webhooks/persona";
    p.wait_for_metric(
        &format!("persona_guard_reconcile_missing_events_total{{route=\"{route}\"}}"),
        1.0,
    );
    // Counted once however many runs find it.
    last_run(&p, now() + 1);
    assert_eq!(
        p.metric(&format!(
            "persona_guard_reconcile_missing_events_total{{route=\"{route}\"}}"
        )),
        1.0
    );
    assert_eq!(
        p.metric(&format!(
            "persona_guard_reconcile_missing_events{{route=\"{route}\"}}"
        )),
        1.0
    );
    assert!(
        p.metric(&format!(
            "persona_guard_reconcile_last_success_timestamp_seconds{{route=\"{route}\"}}"
        )) >= start as f64
    );
    assert_eq!(up.count(), 1, "report delivers nothing");
    assert!(!p.logs().contains(API_KEY));
}

#[test]
fn backfill_delivers_each_missing_event_once_with_the_source_and_trusted_headers() {
    let (up, api) = (Upstream::start(), PersonaApi::start());
    let p = proxy(&up, &api, "backfill", |b| b);
    let start = now();
    let missing = event_id();
    let listed = api_event(&missing, NAME, start + 1);
    api.set_events(vec![listed.clone()]);
    let got = up.wait_for_requests(1, W);
    // Several more runs: the delivered mark stops a second copy.
    last_run(&p, now() + 2);
    assert_eq!(up.count(), 1);
    let r = &got[0];
    assert_eq!(r.header("x-persona-guard-source"), Some("reconciled"));
    assert_eq!(r.header("x-persona-event-id"), Some(missing.as_str()));
    assert_eq!(r.header("x-persona-event-type"), Some(NAME));
    assert!(r.header("x-persona-event-created-at").is_some());
    let body: Json = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"data": listed}),
        "the body is {{\"data\": <event>}}"
    );
    // Persona's own late delivery of it is now a duplicate.
    let late = p.deliver(&event_body(&missing, NAME));
    late.assert_status_json(200, "duplicate");
    assert_eq!(up.count(), 1);
}

#[test]
fn a_forged_source_header_never_reaches_the_app() {
    let (up, p) = rig();
    let body = event_body(&event_id(), NAME);
    let sig = sign(p.secret(), now(), &body);
    let headers = [
        ("Persona-Signature", sig.as_str()),
        ("X-Persona-Guard-Source", "reconciled"),
        ("x_persona_guard_source", "reconciled"),
    ];
    assert_eq!(p.post("/webhooks/persona", &headers, &body).status, 200);
    assert_eq!(p.post("/elsewhere", &headers[1..], b"").status, 200);
    for r in up.wait_for_requests(2, W) {
        assert!(
            r.header_variants("x-persona-guard-source").is_empty(),
            "{:?}",
            r.headers
        );
    }
}

#[test]
fn a_429_stops_the_run_and_the_next_interval_resumes() {
    let (up, api) = (Upstream::start(), PersonaApi::start());
    api.limit_in(1);
    let p = proxy(&up, &api, "report", |b| b);
    let missing = event_id();
    api.set_events(vec![api_event(&missing, NAME, now() + 1)]);
    let limited = poll(W, || {
        let run = p.admin_get("/reconcile").json()["routes"][0]["last_run"].clone();
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("429"))
            .then_some(run)
    })
    .expect("a rate-limited run");
    assert!(limited["resume_at"].as_i64().is_some(), "{limited}");
    p.wait_for_metric(
        "persona_guard_reconcile_runs_total{result=\"rate_limited\",route=\"/webhooks/persona\"}",
        1.0,
    );
    std::thread::sleep(Duration::from_secs(1));
    let later = poll(W, || {
        let run = last_run(&p, now());
        (run["missing"].as_array().is_some_and(|m| !m.is_empty())).then_some(run)
    })
    .unwrap();
    assert_eq!(ids(&later), [missing]);
}

#[test]
fn the_command_needs_a_redis_store_and_prints_a_table_with_its_exit_codes() {
    let api = PersonaApi::start();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let write = |b: ProxyBuilder| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, b.toml()).unwrap();
        path
    };
    let memory = write(
        Proxy::builder()
            .upstream(&up)
            .route(|r| r.set("reconcile", table(&api, "report"))),
    );
    let b = Proxy::builder();
    let webhook_secret = b.secret_values()[0].clone();
    let env = [
        ("PERSONA_API_KEY", API_KEY),
        ("PERSONA_WEBHOOK_SECRET", webhook_secret.as_str()),
    ];
    let out = run_cli(
        &["reconcile", "--config", memory.to_str().unwrap()],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis"));

    let redis = RedisServer::start();
    let with_redis = write(
        Proxy::builder()
            .upstream(&up)
            .redis(&redis.url())
            .route(|r| r.set("reconcile", table(&api, "report"))),
    );
    let cfg = with_redis.to_str().unwrap();
    api.set_events(vec![]);
    let out = run_cli(&["reconcile", "--config", cfg], &env, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = event_id();
    api.set_events(vec![api_event(&missing, NAME, now() - 120)]);
    let out = run_cli(&["reconcile", "--config", cfg], &env, None);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&missing) && l.contains(NAME) && l.ends_with("missing")),
        "{table}"
    );
    let out = run_cli(&["reconcile", "--config", cfg, "--backfill"], &env, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered"));
    assert_eq!(
        up.wait_for_requests(1, W)[0].header("x-persona-guard-source"),
        Some("reconciled")
    );
    let out = run_cli(&["reconcile", "--config", cfg], &env, None);
    assert_eq!(out.status.code(), Some(0), "delivered now");
    let out = run_cli(
        &["reconcile", "--config", cfg],
        &[("PERSONA_API_KEY", "wrong"), env[1]],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A measurement, not a timed assertion: one run over 10,000 events (100
/// pages) of the fake API, half of them missing; prints its duration and the
/// proxy's RSS before and after. `cargo test --release --test e2e -- --ignored
/// reconcile_10k --nocapture`.
#[test]
#[ignore]
fn reconcile_10k_events_measurement() {
    let (up, api) = (Upstream::start(), PersonaApi::start());
    let p = proxy(&up, &api, "report", |b| {
        b.route(|r| {
            r.set("reconcile", {
                let mut t = table(&api, "report");
                t.as_table_mut()
                    .unwrap()
                    .insert("interval".into(), "5s".into());
                t
            })
        })
    });
    // The first run (at start) finds nothing: the events come after it.
    last_run(&p, 0);
    let before = rss_kib(p.pid());
    let created = now() + 1;
    let events: Vec<_> = (0..10_000)
        .map(|i| api_event(&format!("evt_m{i:05}"), NAME, created))
        .collect();
    api.set_events(events);
    let run = poll(Duration::from_secs(60), || {
        let run = p.admin_get("/reconcile").json()["routes"][0]["last_run"].clone();
        (run["events_judged"].as_u64() == Some(10_000)).then_some(run)
    })
    .expect("a run over 10,000 events");
    let after = rss_kib(p.pid());
    println!(
        "reconcile 10k: {} events seen, {} judged, {} missing, {} ms, {} pages asked; RSS {} KiB -> {} KiB ({:+} KiB)",
        run["events_seen"],
        run["events_judged"],
        run["missing"].as_array().map_or(0, Vec::len),
        run["duration_ms"],
        api.event_requests(),
        before,
        after,
        after as i64 - before as i64
    );
}

#[test]
fn two_replicas_on_one_redis_backfill_each_missing_event_once() {
    let (up, api, redis) = (Upstream::start(), PersonaApi::start(), RedisServer::start());
    let created = now() - 120;
    let ids: Vec<String> = (0..20).map(|_| event_id()).collect();
    api.set_events(ids.iter().map(|id| api_event(id, NAME, created)).collect());
    let a = proxy(&up, &api, "backfill", |b| b.redis(&redis.url()));
    let b = proxy(&up, &api, "backfill", |b| b.redis(&redis.url()));
    up.wait_for_requests(ids.len(), W);
    // A few more runs of each: nothing more arrives.
    last_run(&a, now() + 2);
    last_run(&b, now() + 2);
    let got = up.requests();
    let mut seen: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("x-persona-event-id"))
        .collect();
    seen.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(seen, want, "each event exactly once across both replicas");
}

/// Not missing: an event in the app's hands right now (in flight), one kept
/// in the spool (the app answered 500), and, with `webhook_id`, one of a type
/// the webhook does not send. Only the event that never arrived is.
#[test]
fn in_flight_spooled_and_unsubscribed_events_are_not_missing() {
    let (up, api) = (Upstream::start(), PersonaApi::start());
    api.set_enabled_events(&[NAME, "inquiry.completed"]);
    let dir = tempfile::tempdir().unwrap();
    let mut t = table(&api, "report");
    t.as_table_mut()
        .unwrap()
        .insert("webhook_id".into(), "wbh_e2e".into());
    let p = crate::spool::spooling(
        Proxy::builder()
            .upstream(&up)
            .env("PERSONA_API_KEY", API_KEY)
            .route(|r| r.set("reconcile", t)),
        dir.path(),
        "on_failure",
    )
    .start();
    let start = now();
    let (spooled, in_flight, unsubscribed, missing) =
        (event_id(), event_id(), event_id(), event_id());
    up.set_status(500);
    p.deliver(&event_body(&spooled, NAME))
        .assert_status_json(202, "spooled");
    up.set_status(200);
    up.hold();
    let body = event_body(&in_flight, NAME);
    let raw = delivery(ROUTE, &sign(p.secret(), now(), &body), &body);
    let listen = p.listen;
    let held = std::thread::spawn(move || try_one_shot(listen, &raw).map(|r| r.status));
    wait_for("the in-flight event in the app's hands", W, || {
        up.requests()
            .iter()
            .any(|r| r.header("x-persona-event-id") == Some(in_flight.as_str()))
    });
    api.set_events(vec![
        api_event(&spooled, NAME, start + 1),
        api_event(&in_flight, NAME, start + 1),
        api_event(&unsubscribed, "inquiry.created", start + 1),
        api_event(&missing, NAME, start + 1),
    ]);
    // Past `grace` (1 s) for every event, while the app still holds one.
    std::thread::sleep(Duration::from_secs(3));
    let run = last_run(&p, now());
    assert_eq!(ids(&run), [missing], "{run}");
    up.release();
    assert_eq!(held.join().unwrap(), Some(200));
}

/// The API key is never shown by `check --print`, and a literal key is
/// refused without being repeated.
#[test]
fn check_never_shows_the_api_key() {
    let api = PersonaApi::start();
    let b = Proxy::builder().route(|r| r.set("reconcile", table(&api, "report")));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("persona-guard.toml");
    std::fs::write(&file, b.toml()).unwrap();
    let env = [
        ("PERSONA_WEBHOOK_SECRET", "wbhsec_check"),
        ("PERSONA_API_KEY", API_KEY),
    ];
    let path = file.to_str().unwrap();
    let out = run_cli(&["check", "--print", "--config", path], &env, None);
    let text = crate::cli::both_streams(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("env:PERSONA_API_KEY") && !text.contains(API_KEY),
        "{text}"
    );
    let literal = b.route(|r| {
        let mut t = table(&api, "report");
        t.as_table_mut()
            .unwrap()
            .insert("api_key".into(), API_KEY.into());
        r.set("reconcile", t)
    });
    std::fs::write(&file, literal.toml()).unwrap();
    let out = run_cli(&["check", "--print", "--config", path], &env, None);
    let text = crate::cli::both_streams(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("reconcile.api_key") && !text.contains(API_KEY),
        "{text}"
    );
}
