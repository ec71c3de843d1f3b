//! Replay memory: which event ids are being delivered or were delivered.
//!
//! The state machine per (route, event id), shared by every store:
//!
//! ```text
//!   absent --claim--> in flight(token) --commit--> delivered (for `ttl`)
//!                        |   \--release(token)--> absent
//!                        |   \--renew(token)--> in flight(token), for inflight_ttl again
//!                        \--inflight_ttl passes unrenewed--> absent
//! ```
//!
//! * `claim` is atomic: of two concurrent claims of one id exactly one wins.
//! * `commit` is called only after the upstream answered 2xx.
//! * `release` removes only the caller's own in-flight mark, never another
//!   request's claim nor a delivered mark; `renew` likewise extends only the
//!   caller's own mark.
//!
//! # In-flight leases
//!
//! An in-flight mark lives `inflight_ttl`, and the instance delivering the
//! event renews it every `inflight_ttl / 3` ([`RENEW_EVERY`]) for as long as
//! the delivery lives: a [`Lease`] runs the renewal as a task from the claim
//! until it is settled or dropped. So a delivery to a slow application keeps
//! its mark however long it takes (Persona's retries meanwhile get 409), and an
//! instance that dies (SIGKILL, a lost node) stops renewing: its mark expires
//! within `inflight_ttl` and the next retry is delivered. A third of the
//! lifetime leaves room for one renewal to fail or be late (a store timeout,
//! a busy runtime) and the next one to still land before the mark expires.
//!
//! # Layout
//!
//! * this file: the [`ReplayStore`] trait every store implements, what it
//!   answers ([`Claim`], [`StoreKey`], [`StoreError`]), and the [`Lease`] a
//!   winning [`claim`] hands to the request: it carries its store, its key and
//!   its token, and settles the claim exactly once (commit, release, or a
//!   release when it is dropped unsettled);
//! * [`memory`]: one process's memory in a bounded cache, on an injected clock;
//! * [`redis`]: one memory shared by every replica.
//!
//! Nothing here names a store: the stores depend on this file, never the
//! other way round, and the process wiring (`server.rs`) picks one.

pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

/// The outcome of a claim. The winner holds a `T`: the store's raw token
/// ([`ReplayStore::claim`]) or a [`Lease`] ([`claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<T = u64> {
    /// This request owns the delivery; settle it with `commit` or `release`.
    Claimed(T),
    /// Already delivered within `ttl`.
    Duplicate,
    /// Another request is delivering it; its mark expires in `retry_after` at most.
    InFlight { retry_after: Duration },
}

/// A store's key for one event id on one route, derived once per claim
/// ([`ReplayStore::key`]) and given back to the same store to settle it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreKey {
    /// The memory store's 16-byte digest of the pair.
    Digest([u8; 16]),
    /// The Redis key name (readable: prefix, escaped route, event id).
    Name(Box<[u8]>),
}

/// A replay store failure. Its message never carries a secret (such as a
/// password in the Redis URL): each store describes its own failures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError(Box::new(e))
    }
}

/// What `/metrics` reports of a store that holds its entries in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStats {
    /// Entries held now.
    pub entries: u64,
    /// Entries evicted for room before they expired, since the start.
    pub evicted_early: u64,
}

/// A replay memory: the state machine above, for one kind of storage.
#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// This store's key for `event_id` on `route` (the normalized route path).
    /// Distinct pairs always give distinct keys.
    fn key(&self, route: &[u8], event_id: &str) -> StoreKey;

    /// Atomically claims `key` for one delivery lasting at most `inflight_ttl`.
    /// A win carries a token unique to this claim, for `release`.
    async fn claim(&self, key: &StoreKey, inflight_ttl: Duration) -> Result<Claim, StoreError>;

    /// Marks `key` delivered for `ttl` (the upstream answered 2xx).
    async fn commit(&self, key: &StoreKey, ttl: Duration) -> Result<(), StoreError>;

    /// Forgets `key` if, and only if, it is still `token`'s in-flight mark.
    async fn release(&self, key: &StoreKey, token: u64) -> Result<(), StoreError>;

    /// Extends `key`'s in-flight mark to `inflight_ttl` from now if, and only
    /// if, it is still `token`'s; whether it was (`false`: the mark expired,
    /// was released, or the event was committed, and renewing is over).
    async fn renew(
        &self,
        key: &StoreKey,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// In one atomic step: gives `key` a new token's in-flight mark for
    /// `inflight_ttl` when it is absent, expired, or still the mark of the
    /// claim with token `old`; otherwise answers as [`ReplayStore::claim`]
    /// (delivered, or another delivery's mark). How a spooled delivery's
    /// mark passes to the instance that redelivers it ([`adopt`]), with no
    /// moment in which the id is free for another claim.
    async fn take_over(
        &self,
        key: &StoreKey,
        old: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, StoreError>;

    /// Releases as `release` does, without awaiting, when this store can do
    /// that in place; `false` when it cannot and `release` must be awaited.
    /// A [`Lease`] dropped unsettled tries this first.
    fn release_in_place(&self, _key: &StoreKey, _token: u64) -> bool {
        false
    }

    /// Whether the store can answer now (readiness).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Entry counts, for a store that holds its entries in this process
    /// (pending maintenance is run first, so they are exact); `None` otherwise.
    fn local_stats(&self) -> Option<LocalStats> {
        None
    }

    /// Stops the store's background work (connections, late-claim tasks);
    /// calls made afterwards fail. Leases still held then fail to settle and
    /// their marks expire after `inflight_ttl`: a caller replacing a store
    /// (reload) should close the old one only once no lease holds it
    /// (`Arc::strong_count` is 1), or just drop it, which closes it when the
    /// last lease goes.
    async fn close(&self);
}

/// Told of a store failure met settling a lease: the operation (`"commit"`
/// or `"release"`) and the error.
pub type OnError = Arc<dyn Fn(&'static str, &StoreError) + Send + Sync>;

/// How often a [`Lease`] renews its in-flight mark: a third of its lifetime
/// (see "In-flight leases" above), at least every millisecond.
pub fn renew_every(inflight_ttl: Duration) -> Duration {
    (inflight_ttl / RENEW_EVERY).max(Duration::from_millis(1))
}

/// The number of renewals per `inflight_ttl`.
pub const RENEW_EVERY: u32 = 3;

/// Claims `event_id` on `route` for one delivery, its in-flight mark living
/// `inflight_ttl` and renewed by the [`Lease`] until it is settled. The key is
/// derived here, once; a win is a [`Lease`].
pub async fn claim(
    store: &Arc<dyn ReplayStore>,
    route: &[u8],
    event_id: &str,
    inflight_ttl: Duration,
) -> Result<Claim<Lease>, StoreError> {
    let key = store.key(route, event_id);
    claim_key(store, key, inflight_ttl).await
}

async fn claim_key(
    store: &Arc<dyn ReplayStore>,
    key: StoreKey,
    inflight_ttl: Duration,
) -> Result<Claim<Lease>, StoreError> {
    Ok(match store.claim(&key, inflight_ttl).await? {
        Claim::Claimed(token) => Claim::Claimed(hold(store, key, token, inflight_ttl)),
        Claim::Duplicate => Claim::Duplicate,
        Claim::InFlight { retry_after } => Claim::InFlight { retry_after },
    })
}

/// Takes over the in-flight mark of `event_id` on `route` that the claim
/// with `token` made (a spooled delivery, whose request detached its lease):
/// in one atomic step ([`ReplayStore::take_over`]) the mark becomes this
/// lease's, with a token of its own, when it is still `token`'s (or has
/// expired, or a restarted memory store forgot it); a delivered id answers
/// `Duplicate`, another delivery's mark `InFlight`. No claim can come between
/// (a Persona retry racing the spool gets 409). The new token matters when
/// two holders could hold one token (a replica taking over an entry from one
/// that only looked dead): the old holder's renewals and [`Lease::confirm`]
/// then fail, so it stops before sending.
pub async fn adopt(
    store: &Arc<dyn ReplayStore>,
    route: &[u8],
    event_id: &str,
    token: u64,
    inflight_ttl: Duration,
) -> Result<Claim<Lease>, StoreError> {
    let key = store.key(route, event_id);
    Ok(match store.take_over(&key, token, inflight_ttl).await? {
        Claim::Claimed(new) => Claim::Claimed(hold(store, key, new, inflight_ttl)),
        Claim::Duplicate => Claim::Duplicate,
        Claim::InFlight { retry_after } => Claim::InFlight { retry_after },
    })
}

/// A lease on `key`'s mark held by `token`, renewing it from now on.
fn hold(store: &Arc<dyn ReplayStore>, key: StoreKey, token: u64, inflight_ttl: Duration) -> Lease {
    let on_error = Arc::new(OnceLock::new());
    let renewal = tokio::spawn(renew(
        store.clone(),
        key.clone(),
        token,
        inflight_ttl,
        on_error.clone(),
    ))
    .abort_handle();
    Lease {
        store: store.clone(),
        key,
        token,
        armed: true,
        on_error,
        renewal,
    }
}

/// Renews `key`'s mark every [`renew_every`] while it is `token`'s. Stops when
/// it no longer is (settled, or expired after renewals failed) or when the
/// lease aborts it. A failure is reported and the next tick tries again.
async fn renew(
    store: Arc<dyn ReplayStore>,
    key: StoreKey,
    token: u64,
    inflight_ttl: Duration,
    on_error: Arc<OnceLock<OnError>>,
) {
    let every = renew_every(inflight_ttl);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.renew(&key, token, inflight_ttl).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => report(&on_error, "renew", &e),
        }
    }
}

/// A won claim: its store, key and token, and the task renewing its in-flight
/// mark. Settle it with [`Lease::commit`] or
/// [`Lease::release`] (either stops the renewal); dropped unsettled (the client went away, the task was
/// cancelled) it releases itself: in place when the store can, else in a task
/// on the current tokio runtime. A failure to settle changes nothing for the
/// request (its answer is decided): it is reported (see [`Lease::on_error`])
/// and the in-flight mark then expires after `inflight_ttl`.
pub struct Lease {
    store: Arc<dyn ReplayStore>,
    key: StoreKey,
    token: u64,
    /// Cleared once settled, so the drop does nothing.
    armed: bool,
    /// Set at most once, by [`Lease::on_error`]; shared with the renewal.
    on_error: Arc<OnceLock<OnError>>,
    /// The renewal task, aborted when the lease is settled or dropped.
    renewal: tokio::task::AbortHandle,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("armed", &self.armed)
            .finish()
    }
}

impl Lease {
    /// Where settle failures go; by default a warning in the log.
    pub fn on_error(self, f: impl Fn(&'static str, &StoreError) + Send + Sync + 'static) -> Self {
        // A second call keeps the first handler.
        let _ = self.on_error.set(Arc::new(f));
        self
    }

    /// The store key, derived when the claim was made.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// This claim's own token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the lease is held through `store` (a SIGHUP reload may have
    /// replaced the store's client since the claim was made).
    pub fn is_on(&self, store: &Arc<dyn ReplayStore>) -> bool {
        Arc::ptr_eq(&self.store, store)
    }

    /// Marks the event delivered for `ttl` (the upstream answered 2xx).
    pub async fn commit(mut self, ttl: Duration) {
        // Disarmed first: a commit cancelled midway must not release (the
        // upstream took the event; the mark expires after `inflight_ttl`).
        self.armed = false;
        self.renewal.abort();
        if let Err(e) = self.store.commit(&self.key, ttl).await {
            report(&self.on_error, "commit", &e);
        }
    }

    /// Renews the mark now and says whether it is still this lease's (it may
    /// have expired while renewals failed, or been taken over by
    /// [`adopt`]): a holder checks before it sends.
    pub async fn confirm(&self, inflight_ttl: Duration) -> Result<bool, StoreError> {
        self.store.renew(&self.key, self.token, inflight_ttl).await
    }

    /// Stops renewing and hands the mark on unsettled: it lives for
    /// `inflight_ttl` from its last renewal, for whoever [`adopt`]s it by the
    /// returned token (the spool's redelivery). Nothing is released.
    pub fn detach(mut self) -> u64 {
        self.armed = false;
        self.renewal.abort();
        self.token
    }

    /// Forgets the claim so that a retry is admitted.
    pub async fn release(mut self) {
        self.armed = false;
        self.renewal.abort();
        if let Err(e) = self.store.release(&self.key, self.token).await {
            report(&self.on_error, "release", &e);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.armed || self.store.release_in_place(&self.key, self.token) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "a replay claim dropped outside a runtime: its in-flight mark expires after inflight_ttl"
            );
            return;
        };
        let (store, key, token) = (self.store.clone(), self.key.clone(), self.token);
        let on_error = self.on_error.clone();
        runtime.spawn(async move {
            if let Err(e) = store.release(&key, token).await {
                report(&on_error, "release", &e);
            }
        });
    }
}

fn report(on_error: &OnceLock<OnError>, op: &'static str, e: &StoreError) {
    match on_error.get() {
        Some(f) => f(op, e),
        None => tracing::warn!(op, error = %e, "replay store error"),
    }
}

#[cfg(test)]
mod tests {
    //! A lease over a store that fails to settle: where its failures go.
    use super::*;
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
}
