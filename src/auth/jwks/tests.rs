//! The JWKS's refresh policy on paused time, with a fetcher the test
//! drives (the HTTP fetch itself is tested end to end).
use super::*;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicU32;

/// Answers with `body` while `up`, else an error; counts fetches.
struct Scripted {
    body: StdMutex<Option<Vec<u8>>>,
    fetches: AtomicU32,
}

#[async_trait::async_trait]
impl Fetch for Scripted {
    async fn fetch(&self, _url: &str) -> Result<Vec<u8>, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        // A fetch takes a moment, so concurrent askers overlap.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.body
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "connection refused".into())
    }
}

fn set_of(kids: &[&str]) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .map(|k| {
            serde_json::from_slice(&std::fs::read(format!("{dir}{k}.jwk.json")).unwrap()).unwrap()
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
}

type Counts = Arc<StdMutex<Vec<Refreshed>>>;

fn jwks(body: Option<Vec<u8>>, refresh: Duration) -> (Arc<Jwks>, Arc<Scripted>, Counts) {
    let f = Arc::new(Scripted {
        body: StdMutex::new(body),
        fetches: AtomicU32::new(0),
    });
    let counts = Counts::default();
    let c = counts.clone();
    let j = Jwks::new(
        "/r",
        "http://127.0.0.1:1/jwks",
        refresh,
        f.clone(),
        Arc::new(move |_, r| c.lock().unwrap().push(r)),
    );
    (j, f, counts)
}

fn kids(j: &Jwks) -> Vec<String> {
    j.current()
        .map(|s| s.keys.iter().filter_map(|k| k.kid.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn not_ready_until_a_first_fetch_succeeds_then_refreshed_on_schedule() {
    let (j, f, counts) = jwks(None, Duration::from_secs(3600));
    tokio::spawn(crate::auth::keyring::run(Arc::downgrade(&j)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!j.is_ready());
    let failed = f.fetches.load(Ordering::SeqCst);
    assert!(failed >= 4, "retried {failed} times in 5 s");
    *f.body.lock().unwrap() = Some(set_of(&["rsa1"]));
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(j.is_ready());
    assert_eq!(kids(&j), ["rsa1"]);
    let after_first = f.fetches.load(Ordering::SeqCst);
    // Nothing more until jwks_refresh.
    tokio::time::sleep(Duration::from_secs(3000)).await;
    assert_eq!(f.fetches.load(Ordering::SeqCst), after_first);
    *f.body.lock().unwrap() = Some(set_of(&["rsa1", "rsa2"]));
    tokio::time::sleep(Duration::from_secs(700)).await;
    assert_eq!(kids(&j), ["rsa1", "rsa2"]);
    let c = counts.lock().unwrap();
    assert!(c.iter().filter(|r| **r == Refreshed::Error).count() >= 4);
    assert_eq!(c.iter().filter(|r| **r == Refreshed::Ok).count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_last_good_set_and_tries_again_within_a_minute() {
    let (j, f, counts) = jwks(Some(set_of(&["ec1"])), Duration::from_secs(600));
    tokio::spawn(crate::auth::keyring::run(Arc::downgrade(&j)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kids(&j), ["ec1"]);
    *f.body.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert_eq!(kids(&j), ["ec1"], "the last good set stays in use");
    assert_eq!(counts.lock().unwrap().last(), Some(&Refreshed::Error));
    *f.body.lock().unwrap() = Some(set_of(&["ec1", "ed1"]));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(kids(&j), ["ec1", "ed1"]);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_fetches_at_most_once_a_minute_and_concurrent_askers_share_it() {
    let (j, f, _) = jwks(Some(set_of(&["rsa1"])), Duration::from_secs(3600));
    assert_eq!(j.refresh().await, Refreshed::Ok);
    *f.body.lock().unwrap() = Some(set_of(&["rsa1", "rsa2"]));
    let before = f.fetches.load(Ordering::SeqCst);
    let asks: Vec<_> = (0..10)
        .map(|_| {
            let j = j.clone();
            tokio::spawn(async move { j.refresh_for_unknown_kid().await })
        })
        .collect();
    for a in asks {
        assert!(a.await.unwrap());
    }
    assert_eq!(
        f.fetches.load(Ordering::SeqCst),
        before + 1,
        "ten askers, one fetch"
    );
    assert_eq!(kids(&j), ["rsa1", "rsa2"]);
    // Within the minute: no fetch.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!j.refresh_for_unknown_kid().await);
    assert_eq!(f.fetches.load(Ordering::SeqCst), before + 1);
    // After it: one more.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(j.refresh_for_unknown_kid().await);
    assert_eq!(f.fetches.load(Ordering::SeqCst), before + 2);
}
