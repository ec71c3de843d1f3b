//! The [`Lease`] a winning claim hands to the request (see "In-flight
//! leases" in the parent module): its store, its key and its token; its
//! place in the renewer of its thread ([`renewer`]); and exactly one
//! settlement (commit, release, or a release when it is dropped unsettled).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Claim, ReplayStore, StoreError, StoreKey};

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

/// A lease on `key`'s mark held by `token`, renewing it from now on (by its
/// thread's [`renewer`], not a task of its own).
fn hold(store: &Arc<dyn ReplayStore>, key: StoreKey, token: u64, inflight_ttl: Duration) -> Lease {
    let on_error = Arc::new(OnceLock::new());
    let renewal = renewer::register(store, &key, token, inflight_ttl, &on_error);
    Lease {
        store: store.clone(),
        key,
        token,
        inflight_ttl,
        armed: true,
        on_error,
        renewal,
    }
}

/// A won claim: its store, key and token, and its in-flight mark's
/// renewal. Settle it with [`Lease::commit`] or [`Lease::release`] (either
/// stops the renewal); dropped unsettled (the client went away, the task was
/// cancelled) it releases itself: in place when the store can, else in a task
/// on the current tokio runtime. A failure to settle changes nothing for the
/// request (its answer is decided): it is reported (see [`Lease::on_error`]).
/// A failed release leaves the in-flight mark to expire after `inflight_ttl`;
/// a failed commit is written again later ([`commit_later`]) while the mark
/// is renewed.
pub struct Lease {
    store: Arc<dyn ReplayStore>,
    key: StoreKey,
    token: u64,
    inflight_ttl: Duration,
    /// Cleared once settled, so the drop does nothing.
    armed: bool,
    /// Set at most once, by [`Lease::on_error`]; shared with the renewal.
    on_error: Arc<OnceLock<OnError>>,
    /// Its place in the renewer, dropped when the lease is settled or
    /// dropped (or handed to [`commit_later`] when a commit fails).
    renewal: Option<renewer::Registration>,
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
        let (store, key) = (self.store.clone(), self.key.clone());
        self.settle_delivered(store, key, ttl).await;
    }

    /// Writes the delivered mark through `store`; when that fails, the
    /// renewal goes on and the write is tried again in the background
    /// ([`commit_later`]), so the in-flight mark keeps retries out until the
    /// delivered mark lands.
    async fn settle_delivered(
        &mut self,
        store: Arc<dyn ReplayStore>,
        key: StoreKey,
        ttl: Duration,
    ) {
        match store.commit(&key, ttl).await {
            Ok(()) => self.stop_renewal(),
            Err(e) => {
                report(&self.on_error, "commit", &e);
                commit_later(store, key, ttl, self.inflight_ttl, self.renewal.take());
            }
        }
    }

    fn stop_renewal(&mut self) {
        self.renewal = None;
    }

    /// Marks the event delivered for `ttl` through `current`, the store now,
    /// when a reload has replaced the one this lease was taken on (a rotated
    /// Redis password: the old client may no longer be let in). `route` and
    /// `event_id` give the key as `current` spells it. The same as
    /// [`Lease::commit`] when nothing was replaced.
    pub async fn commit_through(
        mut self,
        current: &Arc<dyn ReplayStore>,
        route: &[u8],
        event_id: &str,
        ttl: Duration,
    ) {
        if self.is_on(current) {
            return self.commit(ttl).await;
        }
        self.armed = false;
        self.settle_delivered(current.clone(), current.key(route, event_id), ttl)
            .await;
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
        self.stop_renewal();
        self.token
    }

    /// Forgets the claim so that a retry is admitted.
    pub async fn release(mut self) {
        self.armed = false;
        self.stop_renewal();
        if let Err(e) = self.store.release(&self.key, self.token).await {
            report(&self.on_error, "release", &e);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewal();
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

/// How long a delivered mark that could not be written is tried again.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(600);

/// The first wait before writing a failed delivered mark again; it doubles
/// up to [`COMMIT_RETRY_MAX_WAIT`].
const COMMIT_RETRY_FIRST_WAIT: Duration = Duration::from_millis(100);
const COMMIT_RETRY_MAX_WAIT: Duration = Duration::from_secs(5);

/// The app took the event but its delivered mark could not be written (the
/// store did not answer): tries the write again in the background, every
/// 100 ms doubling to 5 s, for up to [`COMMIT_RETRY_FOR`], while `renewal`
/// keeps the in-flight mark alive (so a retry meanwhile gets 409, not a
/// second copy). Only a store unavailable for longer than `inflight_ttl` lets
/// the in-flight mark expire first. Outside a tokio runtime nothing can run
/// later: the mark expires after `inflight_ttl`, as before.
fn commit_later(
    store: Arc<dyn ReplayStore>,
    key: StoreKey,
    ttl: Duration,
    inflight_ttl: Duration,
    renewal: Option<renewer::Registration>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let started = tokio::time::Instant::now();
        let mut wait = COMMIT_RETRY_FIRST_WAIT;
        let mut tries = 1u32;
        loop {
            tokio::time::sleep(wait).await;
            tries += 1;
            match store.commit(&key, ttl).await {
                Ok(()) => {
                    tracing::info!(
                        tries,
                        "replay store: the delivered mark was written on a later try"
                    );
                    break;
                }
                Err(e) if started.elapsed() >= COMMIT_RETRY_FOR => {
                    tracing::error!(
                        tries,
                        error = %e,
                        inflight_ttl_seconds = inflight_ttl.as_secs(),
                        "replay store: gave up writing a delivered mark; a retry of this event after the in-flight mark expires is forwarded again"
                    );
                    break;
                }
                Err(_) => wait = (wait * 2).min(COMMIT_RETRY_MAX_WAIT),
            }
        }
        drop(renewal);
    });
}

fn report(on_error: &OnceLock<OnError>, op: &'static str, e: &StoreError) {
    match on_error.get() {
        Some(f) => f(op, e),
        None => tracing::warn!(op, error = %e, "replay store error"),
    }
}

mod renewer;

#[cfg(test)]
mod tests;
