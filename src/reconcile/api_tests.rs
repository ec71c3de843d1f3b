//! The API client against a fake [`Fetch`]: pagination, the Bearer key,
//! 429 and `RateLimit-*`, the webhook's events; and a run's judging.

use std::collections::HashSet;
use std::sync::Mutex;

use super::*;
use crate::reconcile::{Scope, find_missing};
use crate::replay::ReplayStore;

/// Answers from a list, recording every URL and `Authorization` asked.
struct Fake {
    answers: Mutex<Vec<http::Response<Vec<u8>>>>,
    asked: Mutex<Vec<(String, String)>>,
}

impl Fake {
    fn new(answers: Vec<http::Response<Vec<u8>>>) -> Arc<Fake> {
        Arc::new(Fake {
            answers: Mutex::new(answers.into_iter().rev().collect()),
            asked: Mutex::new(Vec::new()),
        })
    }
}

impl Fetch for Fake {
    fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<http::Response<Vec<u8>>, String> {
        let auth = headers
            .iter()
            .find(|(n, _)| *n == "Authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.asked.lock().unwrap().push((url.to_string(), auth));
        self.answers.lock().unwrap().pop().ok_or("no answer".into())
    }
}

fn ok(body: serde_json::Value) -> http::Response<Vec<u8>> {
    http::Response::new(serde_json::to_vec(&body).unwrap())
}

fn event(id: &str, name: &str, created_ms: u64) -> serde_json::Value {
    let at =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(created_ms))
            .to_string();
    serde_json::json!({"type": "event", "id": id, "attributes": {"name": name, "created-at": at, "payload": {}}})
}

const NOW: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

fn api(fake: &Arc<Fake>) -> Arc<Api> {
    Arc::new(Api::new(
        fake.clone(),
        "http://127.0.0.1:9",
        Secret::new(b"persona_sandbox_KEY".to_vec()),
        Inflection::Kebab,
    ))
}

#[test]
fn pages_follow_links_next_on_the_same_base_only_with_the_bearer_key() {
    let fake = Fake::new(vec![
        ok(
            serde_json::json!({"data": [event("evt_2", "a", NOW)], "links": {"next": "/api/v1/events?page%5Bafter%5D=evt_2"}}),
        ),
        ok(
            serde_json::json!({"data": [event("evt_1", "a", NOW)], "links": {"next": "https://elsewhere.example/api/v1/events"}}),
        ),
    ]);
    let api = api(&fake);
    let first = api.page(&api.first_page(), NOW).unwrap();
    assert_eq!(first.events[0].id, "evt_2");
    assert_eq!(first.events[0].created_ms, Some(NOW));
    let next = first.next.unwrap();
    assert_eq!(
        next,
        "http://127.0.0.1:9/api/v1/events?page%5Bafter%5D=evt_2"
    );
    let second = api.page(&next, NOW).unwrap();
    assert_eq!(
        second.next, None,
        "a next link on another host is not followed"
    );
    let asked = fake.asked.lock().unwrap();
    assert_eq!(
        asked[0].0,
        "http://127.0.0.1:9/api/v1/events?page%5Bsize%5D=100"
    );
    assert!(asked.iter().all(|(_, a)| a == "Bearer persona_sandbox_KEY"));
}

#[test]
fn a_429_names_when_to_resume_and_no_error_quotes_the_key() {
    let limited = http::Response::builder()
        .status(429)
        .header("Retry-After", "5")
        .header("RateLimit-Reset", "30")
        .body(Vec::new())
        .unwrap();
    let refused = http::Response::builder()
        .status(401)
        .body(b"KEY".to_vec())
        .unwrap();
    let fake = Fake::new(vec![limited, refused]);
    let api = api(&fake);
    assert_eq!(
        api.page(&api.first_page(), NOW),
        Err(ApiError::RateLimited {
            resume_at_ms: NOW + 30_000
        })
    );
    let e = api.page(&api.first_page(), NOW).unwrap_err();
    assert_eq!(e, ApiError::Refused(401));
    assert!(!e.to_string().contains("persona_sandbox"));
}

#[test]
fn the_webhooks_enabled_events_are_read_under_its_inflection() {
    let fake = Fake::new(vec![ok(
        serde_json::json!({"data": {"type": "webhook", "id": "wbh_1", "attributes": {"enabled-events": ["inquiry.approved"]}}}),
    )]);
    assert_eq!(
        api(&fake).webhook_events("wbh_1", NOW).unwrap(),
        ["inquiry.approved"]
    );
    assert_eq!(
        fake.asked.lock().unwrap()[0].0,
        "http://127.0.0.1:9/api/v1/webhooks/wbh_1"
    );
}

#[tokio::test]
async fn a_run_finds_only_undelivered_accepted_events_in_the_window_past_grace() {
    let route = crate::config::from_str(
        "[[route]]\npath = \"/w\"\nsecrets = [\"s\"]\nevents = [\"inquiry.*\"]\n",
        &crate::config::EnvSource,
    )
    .unwrap()
    .policy
    .routes
    .remove(0);
    let store: Arc<dyn ReplayStore> = Arc::new(crate::replay::memory::MemoryStore::new(
        100,
        Arc::new(crate::replay::memory::SystemClock::default()),
    ));
    let ttl = Duration::from_secs(3600);
    for (id, commit) in [("evt_done", true), ("evt_flying", false)] {
        let k = store.key(&route.normalized, id);
        store.claim(&k, ttl).await.unwrap();
        if commit {
            store.commit(&k, ttl).await.unwrap();
        }
    }
    let fake = Fake::new(vec![
        ok(serde_json::json!({"data": [
            event("evt_young", "inquiry.approved", NOW - MIN),
            event("evt_missing", "inquiry.approved", NOW - 20 * MIN),
            event("evt_done", "inquiry.approved", NOW - 21 * MIN),
            event("evt_flying", "inquiry.approved", NOW - 22 * MIN),
            event("evt_other", "report.run", NOW - 23 * MIN),
            event("evt_dead", "inquiry.approved", NOW - 24 * MIN),
        ], "links": {"next": "/api/v1/events?page%5Bafter%5D=evt_dead"}})),
        ok(serde_json::json!({"data": [
            event("evt_missing_2", "inquiry.completed", NOW - 30 * MIN),
            event("evt_old", "inquiry.approved", NOW - 300 * MIN),
        ], "links": {"next": "/api/v1/events?page%5Bafter%5D=evt_old"}})),
    ]);
    let scope = Scope {
        route: &route,
        store,
        dead: HashSet::from(["evt_dead".to_string()]),
        webhook_events: None,
        now_ms: NOW,
        window: Duration::from_secs(3600),
        grace: Duration::from_secs(15 * 60),
        since_ms: None,
        max_pages: 10,
        keep_objects: false,
    };
    let found = find_missing(&api(&fake), &scope).await;
    let ids: Vec<&str> = found.missing.iter().map(|m| m.event.id.as_str()).collect();
    assert_eq!(ids, ["evt_missing", "evt_missing_2"]);
    assert_eq!((found.seen, found.pages), (8, 2), "no page past the window");
    assert!(found.error.is_none());
}
