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
