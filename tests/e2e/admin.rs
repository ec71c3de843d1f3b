//! The admin listener (`docs/behaviour.md` § Operations, § Delivery spool):
//! calls that change state (`POST /spool/retry`, `DELETE /spool/dead`) answer
//! only 127.0.0.1 and ::1, or the `[admin] token`; read-only calls answer
//! every peer; the path is matched once and the method checked per endpoint
//! (405 with `Allow`, 404 off the map); a dead letter first spooled longer
//! than `replay.ttl` ago is retried only with `force=true`.
//!
//! A client bound to 127.0.0.2 is "another address": on Linux every address
//! of 127.0.0.0/8 is local, so it reaches the admin listener on 127.0.0.1
//! with 127.0.0.2 as its peer address.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::harness::*;
use crate::spool::{accepted_counts, spool_series, spooling, wait_accepted};

const ELSEWHERE: &str = "127.0.0.2";
const TOKEN_VAR: &str = "PG_E2E_ADMIN_TOKEN";
const TOKEN: &str = "e2e-admin-t0ken-5f3a9c";

/// One admin request from the address `from`.
fn admin_from(p: &Proxy, from: &str, method: &str, target: &str, auth: Option<&str>) -> Response {
    let from: IpAddr = from.parse().unwrap();
    let mut c = Client::connect_from(from, p.admin);
    let header = auth.map(|a| ("Authorization", a));
    c.request(&request(method, target, header.as_slice(), b""))
}

fn refused(reason: &str) -> String {
    format!("persona_guard_admin_refused_total{{reason=\"{reason}\"}}")
}

/// `n` dead letters (the app answers 500; `spool.max_age` is short), by event id.
fn dead_letters(p: &Proxy, up: &Upstream, n: usize) -> Vec<String> {
    up.set_status(500);
    let before = p.metric(&spool_series("dead_letters"));
    let ids: Vec<String> = (0..n).map(|_| event_id()).collect();
    for id in &ids {
        p.deliver(&event_body(id, "inquiry.failed"))
            .assert_status_json(202, "spooled");
    }
    let want = before + n as f64;
    wait_for(
        format!("{want} dead letters"),
        Duration::from_secs(15),
        || p.metric(&spool_series("dead_letters")) == want,
    );
    ids
}

/// The dead letters `GET /spool` lists (from loopback): event id and age in seconds.
fn listed(p: &Proxy) -> Vec<(String, u64)> {
    let v = p.admin_get("/spool").json();
    v["routes"][0]["dead"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["event_id"].as_str().unwrap().to_string(),
                        d["age_seconds"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn listed_ids(p: &Proxy) -> HashSet<String> {
    listed(p).into_iter().map(|(id, _)| id).collect()
}

/// Waits until the dead letter `id` is listed `older_than` seconds old or more.
fn wait_age(p: &Proxy, id: &str, at_least: u64) {
    wait_for(
        format!("{id} to be {at_least}s old"),
        Duration::from_secs(at_least + 15),
        || listed(p).iter().any(|(i, age)| i == id && *age >= at_least),
    );
}

#[test]
fn state_changing_calls_from_another_address_are_403_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure").set("spool.max_age", "1s"));
    let ids = dead_letters(&p, &up, 1);
    let id = &ids[0];
    up.set_status(200);
    let before = up.count();

    for (method, target) in [
        ("POST", format!("/spool/retry?id={id}")),
        ("POST", "/spool/retry".to_string()),
        ("POST", format!("/spool/retry?id={id}&force=true")),
        ("DELETE", format!("/spool/dead?id={id}")),
    ] {
        let r = admin_from(&p, ELSEWHERE, method, &target, None);
        r.assert_error(403, "forbidden");
        assert!(r.text().contains("127.0.0.1"), "{}", r.text());
    }
    // Nothing changed: still one dead letter, listed, and the app not called.
    assert_eq!(listed_ids(&p), HashSet::from([id.clone()]));
    assert_eq!(p.metric(&spool_series("dead_letters")), 1.0);
    assert_eq!(p.metric(&refused("no_token")), 4.0);
    assert_eq!(p.metric(&refused("wrong_token")), 0.0);
    assert!(
        p.logs().contains("state-changing call refused"),
        "{}",
        p.logs()
    );

    // Read-only calls answer another address.
    for target in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/spool",
        &format!("/spool/dead?route={ROUTE}"),
    ] {
        let r = admin_from(&p, ELSEWHERE, "GET", target, None);
        assert_eq!(r.status, 200, "GET {target}: {}", r.text());
    }
    let page = admin_from(
        &p,
        ELSEWHERE,
        "GET",
        &format!("/spool/dead?route={ROUTE}"),
        None,
    );
    assert_eq!(page.json()["dead"][0]["event_id"], id.as_str());

    // From 127.0.0.1 the same calls work.
    let r = admin_from(
        &p,
        "127.0.0.1",
        "POST",
        &format!("/spool/retry?id={id}"),
        None,
    );
    assert_eq!((r.status, r.json()["retried"].as_u64()), (200, Some(1)));
    wait_accepted(&up, std::slice::from_ref(id), Duration::from_secs(10));
    assert_eq!(up.count(), before + 1);
    let other = dead_letters(&p, &up, 1);
    let r = admin_from(
        &p,
        "127.0.0.1",
        "DELETE",
        &format!("/spool/dead?id={}", other[0]),
        None,
    );
    assert_eq!((r.status, r.json()["deleted"].as_u64()), (200, Some(1)));
    assert!(listed_ids(&p).is_empty());
}

#[test]
fn the_admin_token_opens_state_changing_calls_to_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| {
        spooling(b, dir.path(), "on_failure")
            .set("spool.max_age", "1s")
            .set("admin.token", format!("env:{TOKEN_VAR}"))
            .env(TOKEN_VAR, TOKEN)
    });
    let ids = dead_letters(&p, &up, 2);
    let (retried, deleted) = (&ids[0], &ids[1]);
    up.set_status(200);
    let wrong = "Bearer e2e-admin-t0ken-5f3a9d";
    let right = format!("Bearer {TOKEN}");

    for auth in [
        Some(wrong),
        Some(TOKEN),
        Some("Basic ZTJlOmUyZQ=="),
        Some("Bearer "),
    ] {
        let r = admin_from(
            &p,
            ELSEWHERE,
            "POST",
            &format!("/spool/retry?id={retried}"),
            auth,
        );
        r.assert_error(403, "forbidden");
        let r = admin_from(
            &p,
            ELSEWHERE,
            "DELETE",
            &format!("/spool/dead?id={deleted}"),
            auth,
        );
        r.assert_error(403, "forbidden");
    }
    admin_from(&p, ELSEWHERE, "POST", "/spool/retry", None).assert_error(403, "forbidden");
    assert_eq!(
        listed_ids(&p),
        HashSet::from([retried.clone(), deleted.clone()])
    );
    assert_eq!(p.metric(&refused("wrong_token")), 8.0);
    assert_eq!(p.metric(&refused("no_token")), 1.0);

    let r = admin_from(
        &p,
        ELSEWHERE,
        "POST",
        &format!("/spool/retry?id={retried}"),
        Some(&right),
    );
    assert_eq!(
        (r.status, r.json()["retried"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    wait_accepted(&up, std::slice::from_ref(retried), Duration::from_secs(10));
    let r = admin_from(
        &p,
        ELSEWHERE,
        "DELETE",
        &format!("/spool/dead?id={deleted}"),
        Some(&right),
    );
    assert_eq!(
        (r.status, r.json()["deleted"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    assert!(listed_ids(&p).is_empty());
    assert!(!up.accepted_ids().contains(deleted));
    // Neither the token nor the wrong one reached the logs.
    let logs = p.logs();
    assert!(!logs.contains("t0ken-5f3a9"), "{logs}");
}

/// `[admin] token` is read with the file: a SIGHUP after the token file
/// changed turns the old token away and lets the new one in.
#[test]
fn a_reload_reads_a_new_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "first-t0ken-aa11\n").unwrap();
    let (_up, p) = rig_with(|b| b.set("admin.token", format!("file:{}", file.display())));
    // No spool here: an authorized DELETE reaches its handler (404
    // `no_spool`), a refused one stops at 403.
    let delete =
        |auth: &str| admin_from(&p, ELSEWHERE, "DELETE", "/spool/dead?id=evt_x", Some(auth));
    delete("Bearer first-t0ken-aa11").assert_error(404, "no_spool");
    delete("Bearer second-t0ken-bb22").assert_error(403, "forbidden");

    std::fs::write(&file, "second-t0ken-bb22\n").unwrap();
    p.reload_ok();
    delete("Bearer second-t0ken-bb22").assert_error(404, "no_spool");
    delete("Bearer first-t0ken-aa11").assert_error(403, "forbidden");
    assert!(!p.logs().contains("t0ken"), "{}", p.logs());
}

/// Each admin path answers its methods; another method is 405 with `Allow`
/// naming them; a path not on the map is 404 whatever the method.
#[test]
fn every_endpoint_answers_405_for_another_method_and_404_off_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, p) = rig_with(|b| spooling(b, dir.path(), "on_failure"));
    let endpoints = [
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/metrics", "GET"),
        ("/spool", "GET"),
        ("/spool/dead", "GET, DELETE"),
        ("/spool/retry", "POST"),
    ];
    for (path, allow) in endpoints {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let r = p.admin_request(method, path);
            if allow.split(", ").any(|m| m == method) {
                assert_ne!(r.status, 405, "{method} {path}: {}", r.text());
                assert_ne!(r.status, 404, "{method} {path}: {}", r.text());
            } else {
                r.assert_error(405, "method_not_allowed");
                assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
            }
        }
    }
    for path in ["/", "/nowhere", "/spool/retry/x", "/healthz/", "/SPOOL"] {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let r = p.admin_request(method, path);
            r.assert_error(404, "not_found");
            assert_eq!(r.header("allow"), None, "{method} {path}");
        }
    }
    // Routing comes before the peer check: another address gets the same
    // 404 and 405, and 403 only on an endpoint that changes state.
    admin_from(&p, ELSEWHERE, "POST", "/nowhere", None).assert_error(404, "not_found");
    admin_from(&p, ELSEWHERE, "PUT", "/spool/retry", None).assert_error(405, "method_not_allowed");
    admin_from(&p, ELSEWHERE, "POST", "/spool/retry", None).assert_error(403, "forbidden");
}

/// A dead letter first spooled longer than `replay.ttl` ago: its delivered
/// mark may have expired, so a retry could deliver it twice. Without
/// `force=true` it is refused (409, listed by id), with it retried.
#[test]
fn a_dead_letter_older_than_ttl_is_retried_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| {
        spooling(b, dir.path(), "on_failure")
            .set("spool.max_age", "1s")
            .set("replay.ttl", "2s")
            .route(|r| r.set("tolerance", "1s"))
    });
    let ids = dead_letters(&p, &up, 1);
    let id = &ids[0];
    // Older than ttl (2 s): listed 3 s old or more.
    wait_age(&p, id, 3);
    up.set_status(200);
    let before = up.count();

    let r = p.admin_request("POST", &format!("/spool/retry?id={id}"));
    r.assert_error(409, "force_required");
    let v = r.json();
    assert_eq!(v["needs_force"][0]["event_id"], id.as_str(), "{v}");
    assert_eq!(v["needs_force"][0]["route"], ROUTE, "{v}");
    let message = v["message"].as_str().unwrap();
    for words in ["replay.ttl", "delivered", "twice", "force=true"] {
        assert!(message.contains(words), "{words}: {message}");
    }
    assert_eq!(
        p.admin_request("POST", &format!("/spool/retry?id={id}&force=yes"))
            .error_code()
            .as_deref(),
        Some("bad_force")
    );
    assert_eq!(
        p.admin_request("POST", &format!("/spool/retry?id={id}&force=false"))
            .status,
        409
    );
    // Refused means untouched: still a dead letter, the app not called.
    assert_eq!(listed_ids(&p), HashSet::from([id.clone()]));
    assert_eq!(up.count(), before);

    let r = p.admin_request("POST", &format!("/spool/retry?id={id}&force=true"));
    assert_eq!(
        (r.status, r.json()["retried"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["needs_force"], serde_json::json!([]));
    wait_accepted(&up, std::slice::from_ref(id), Duration::from_secs(10));
    assert_eq!(accepted_counts(&up)[id], 1);
    assert!(listed_ids(&p).is_empty());
}

/// `POST /spool/retry` without `id`: the dead letters younger than `ttl`
/// are retried, the older ones listed under `needs_force` and kept; then
/// `force=true` retries those.
#[test]
fn retrying_every_dead_letter_retries_the_fresh_and_lists_the_stale() {
    const TTL: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let (up, p) = rig_with(|b| {
        spooling(b, dir.path(), "on_failure")
            .set("spool.max_age", "1s")
            .set("spool.max_backoff", "1s")
            .set("replay.ttl", format!("{TTL}s"))
            .route(|r| r.set("tolerance", "3s"))
    });
    let stale = dead_letters(&p, &up, 1).remove(0);
    wait_age(&p, &stale, TTL + 1);
    let fresh = dead_letters(&p, &up, 1).remove(0);
    let ages: Vec<(String, u64)> = listed(&p);
    let fresh_age = ages.iter().find(|(i, _)| *i == fresh).unwrap().1;
    assert!(
        fresh_age < TTL - 1,
        "the fresh dead letter is already {fresh_age}s old: {ages:?}"
    );
    eprintln!("a dead letter {fresh_age}s old next to one past the {TTL}s ttl");
    up.set_status(200);

    let r = p.admin_request("POST", "/spool/retry");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["retried"], 1, "{v}");
    let needs: Vec<&str> = v["needs_force"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(needs, [stale.as_str()], "{v}");
    assert!(v["message"].as_str().unwrap().contains("force=true"), "{v}");
    wait_accepted(&up, std::slice::from_ref(&fresh), Duration::from_secs(10));
    assert_eq!(listed_ids(&p), HashSet::from([stale.clone()]));
    assert!(!up.accepted_ids().contains(&stale));

    let r = p.admin_request("POST", "/spool/retry?force=true");
    assert_eq!(
        (r.status, r.json()["retried"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    wait_accepted(&up, std::slice::from_ref(&stale), Duration::from_secs(10));
    let counts = accepted_counts(&up);
    assert_eq!((counts[&stale], counts[&fresh]), (1, 1), "{counts:?}");
}

/// The same rule with the Redis store, whose dead letters live in a stream
/// and keep their first `spooled_at` through a retry.
#[test]
fn a_dead_letter_older_than_ttl_needs_force_on_redis_too() {
    let redis = RedisServer::start();
    let (up, p) = rig_with(|b| {
        b.redis(&redis.url())
            .set("spool.max_backoff", "1s")
            .set("spool.max_age", "1s")
            .set("replay.ttl", "2s")
            .route(|r| r.set("spool", "on_failure").set("tolerance", "1s"))
    });
    let ids = dead_letters(&p, &up, 1);
    let id = &ids[0];
    wait_age(&p, id, 3);
    up.set_status(200);

    let r = p.admin_request("POST", &format!("/spool/retry?id={id}"));
    r.assert_error(409, "force_required");
    assert_eq!(r.json()["needs_force"][0]["event_id"], id.as_str());
    let r = p.admin_request("POST", "/spool/retry");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["retried"], 0);
    assert_eq!(r.json()["needs_force"][0]["event_id"], id.as_str());
    assert_eq!(listed_ids(&p), HashSet::from([id.clone()]));
    assert!(!up.accepted_ids().contains(id));

    let r = p.admin_request("POST", &format!("/spool/retry?id={id}&force=true"));
    assert_eq!(
        (r.status, r.json()["retried"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    wait_accepted(&up, std::slice::from_ref(id), Duration::from_secs(10));
    assert_eq!(accepted_counts(&up)[id], 1);
}
