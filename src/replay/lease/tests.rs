//! A lease over a store that fails to settle: where its failures go.
use super::*;
use async_trait::async_trait;
use std::sync::Mutex;

/// Wins every claim with token 7; every commit and release fails.
#[derive(Default)]
struct Failing {
    releases: Mutex<Vec<u64>>,
}

#[derive(Debug, thiserror::Error)]
#[error("down")]
struct Down;

#[async_trait]
impl ReplayStore for Failing {
    fn key(&self, _: &[u8], event_id: &str) -> StoreKey {
        StoreKey::Name(event_id.as_bytes().into())
    }
    async fn claim(&self, _: &StoreKey, _: Duration) -> Result<Claim, StoreError> {
        Ok(Claim::Claimed(7))
    }
    async fn commit(&self, _: &StoreKey, _: Duration) -> Result<(), StoreError> {
        Err(StoreError::new(Down))
    }
    async fn release(&self, _: &StoreKey, token: u64) -> Result<(), StoreError> {
        self.releases.lock().unwrap().push(token);
        Err(StoreError::new(Down))
    }
    async fn renew(&self, _: &StoreKey, _: u64, _: Duration) -> Result<bool, StoreError> {
        Err(StoreError::new(Down))
    }
    async fn take_over(&self, _: &StoreKey, _: u64, _: Duration) -> Result<Claim, StoreError> {
        Err(StoreError::new(Down))
    }
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn close(&self) {}
}

type Seen = Arc<Mutex<Vec<(&'static str, String)>>>;

async fn lease(store: &Arc<Failing>, seen: &Seen) -> Lease {
    let dyn_store: Arc<dyn ReplayStore> = store.clone();
    let seen = seen.clone();
    match claim(&dyn_store, b"/r", "evt_1", Duration::from_secs(60)).await {
        Ok(Claim::Claimed(lease)) => lease.on_error(move |op, e| {
            seen.lock().unwrap().push((op, e.to_string()));
        }),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn settle_failures_are_reported_with_their_operation() {
    let (store, seen) = (Arc::new(Failing::default()), Seen::default());
    lease(&store, &seen)
        .await
        .commit(Duration::from_secs(1))
        .await;
    lease(&store, &seen).await.release().await;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("commit", "down".to_string()),
            ("release", "down".to_string())
        ]
    );
    // The commit did not release; the release did, once, with the token.
    assert_eq!(*store.releases.lock().unwrap(), [7]);
}

#[tokio::test]
async fn dropped_unsettled_it_releases_in_a_task_and_reports_a_failure() {
    let (store, seen) = (Arc::new(Failing::default()), Seen::default());
    drop(lease(&store, &seen).await);
    for _ in 0..100 {
        if !seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(*seen.lock().unwrap(), [("release", "down".to_string())]);
    assert_eq!(*store.releases.lock().unwrap(), [7]);
}

#[test]
fn dropped_outside_a_runtime_it_gives_up_quietly() {
    let (store, seen) = (Arc::new(Failing::default()), Seen::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    drop(rt.block_on(lease(&store, &seen)));
    assert!(store.releases.lock().unwrap().is_empty());
}

/// Commits fail while `down` is set; counts renewals and commits.
#[derive(Default)]
struct Flaky {
    down: std::sync::atomic::AtomicBool,
    commits: std::sync::atomic::AtomicU32,
    renewals: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl ReplayStore for Flaky {
    fn key(&self, _: &[u8], event_id: &str) -> StoreKey {
        StoreKey::Name(event_id.as_bytes().into())
    }
    async fn claim(&self, _: &StoreKey, _: Duration) -> Result<Claim, StoreError> {
        Ok(Claim::Claimed(7))
    }
    async fn commit(&self, _: &StoreKey, _: Duration) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.commits.fetch_add(1, SeqCst);
        match self.down.load(SeqCst) {
            true => Err(StoreError::new(Down)),
            false => Ok(()),
        }
    }
    async fn release(&self, _: &StoreKey, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn renew(&self, _: &StoreKey, _: u64, _: Duration) -> Result<bool, StoreError> {
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(true)
    }
    async fn take_over(&self, _: &StoreKey, _: u64, _: Duration) -> Result<Claim, StoreError> {
        Err(StoreError::new(Down))
    }
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn close(&self) {}
}

/// A commit that fails is written again later, and the in-flight mark is
/// renewed until it lands; then the renewal stops. On paused time.
#[tokio::test(start_paused = true)]
async fn a_failed_commit_is_retried_while_the_mark_is_renewed() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(Flaky::default());
    store.down.store(true, SeqCst);
    let dyn_store: Arc<dyn ReplayStore> = store.clone();
    let inflight = Duration::from_secs(3);
    let Ok(Claim::Claimed(lease)) = claim(&dyn_store, b"/r", "evt_1", inflight).await else {
        panic!("expected a claim")
    };
    lease.commit(Duration::from_secs(60)).await;
    // Down for two lifetimes of the mark: renewed throughout, commits retried.
    tokio::time::sleep(inflight * 2).await;
    let (renewed, tried) = (store.renewals.load(SeqCst), store.commits.load(SeqCst));
    assert!(renewed >= 5, "renewed {renewed} times in two lifetimes");
    assert!(tried >= 4, "the commit was tried {tried} times");
    // Back: the next try lands, and nothing runs after it.
    store.down.store(false, SeqCst);
    tokio::time::sleep(COMMIT_RETRY_MAX_WAIT * 2).await;
    let (renewed, tried) = (store.renewals.load(SeqCst), store.commits.load(SeqCst));
    tokio::time::sleep(inflight * 3).await;
    assert_eq!(
        store.commits.load(SeqCst),
        tried,
        "no commit after the one that landed"
    );
    assert_eq!(store.renewals.load(SeqCst), renewed, "the renewal stopped");
}

/// Down for longer than the retries last: it gives up, and the renewal stops.
#[tokio::test(start_paused = true)]
async fn a_commit_that_never_lands_is_given_up_after_its_retry_window() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(Flaky::default());
    store.down.store(true, SeqCst);
    let dyn_store: Arc<dyn ReplayStore> = store.clone();
    let Ok(Claim::Claimed(lease)) = claim(&dyn_store, b"/r", "evt_1", Duration::from_secs(3)).await
    else {
        panic!("expected a claim")
    };
    lease.commit(Duration::from_secs(60)).await;
    tokio::time::sleep(COMMIT_RETRY_FOR + COMMIT_RETRY_MAX_WAIT * 2).await;
    let (renewed, tried) = (store.renewals.load(SeqCst), store.commits.load(SeqCst));
    assert!(tried > 100, "tried {tried} times in ten minutes");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.commits.load(SeqCst), tried);
    assert_eq!(store.renewals.load(SeqCst), renewed);
}

/// One renewer per thread: many leases are renewed on their schedule by it,
/// a settled one stops at once, and a thread whose runtime ended (the
/// renewer's task dropped with it) renews again on its next runtime.
#[test]
fn leases_are_renewed_by_their_threads_renewer_across_runtimes() {
    use std::sync::atomic::Ordering::SeqCst;
    for round in 0..3 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = (Arc::new(Flaky::default()), Arc::new(Flaky::default()));
            let inflight = Duration::from_secs(3);
            let take = |s: &Arc<Flaky>| {
                let s: Arc<dyn ReplayStore> = s.clone();
                async move {
                    match claim(&s, b"/r", "evt_1", inflight).await {
                        Ok(Claim::Claimed(lease)) => lease,
                        other => panic!("{other:?}"),
                    }
                }
            };
            let (held, settled) = (take(&a).await, take(&b).await);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            settled.release().await;
            // Every second (a third of 3 s) for 10 s: 10 renewals; the
            // released lease had one (at 1 s) and no more.
            tokio::time::sleep(Duration::from_millis(8600)).await;
            assert_eq!(a.renewals.load(SeqCst), 10, "round {round}");
            assert_eq!(b.renewals.load(SeqCst), 1, "round {round}");
            drop(held);
            tokio::time::sleep(inflight * 2).await;
            assert_eq!(
                a.renewals.load(SeqCst),
                10,
                "round {round}: dropped, it stops"
            );
        });
    }
}
