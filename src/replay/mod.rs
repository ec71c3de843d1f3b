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
//! the delivery lives: a [`Lease`] is renewed from the claim until it is
//! settled or dropped (by one task per worker thread for all the leases the
//! thread took, not a task per lease). So a delivery to a slow application
//! keeps its mark however long it takes (Persona's retries meanwhile get 409), and an
//! instance that dies (SIGKILL, a lost node) stops renewing: its mark expires
//! within `inflight_ttl` and the next retry is delivered. A third of the
//! lifetime leaves room for one renewal to fail or be late (a store timeout,
//! a busy runtime) and the next one to still land before the mark expires.
//!
//! # Layout
//!
//! * this file: the [`ReplayStore`] trait every store implements and what it
//!   answers ([`Claim`], [`StoreKey`], [`StoreError`]);
//! * `lease.rs`: [`claim`] and [`adopt`], and the [`Lease`] a win hands to
//!   the request: it carries its store, its key and its token, renews its
//!   mark, and settles the claim exactly once (commit, release, or a release
//!   when it is dropped unsettled);
//! * [`memory`]: one process's memory in a bounded cache, on an injected clock;
//! * [`redis`]: one memory shared by every replica;
//! * [`kind`]: the one place that names the stores: which one `replay.store`
//!   builds, what a reload does with it, which spool goes beside it.
//!
//! Nothing else here names a store: the stores depend on this file, never the
//! other way round.

pub mod kind;
mod lease;
pub mod memory;
pub mod redis;

pub use lease::{Lease, OnError, RENEW_EVERY, adopt, claim, renew_every};

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

/// What a store holds for one key now ([`ReplayStore::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Nothing: never claimed, released, or expired.
    Absent,
    /// A delivery holds it (a request, the spool's worker, a backfill).
    InFlight,
    /// Delivered within `ttl`.
    Delivered,
}

/// A store that cannot be read without claiming.
#[derive(Debug, thiserror::Error)]
#[error("this replay store cannot be read without claiming")]
struct NoPeek;

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

    /// What the store holds for each of `keys` now, in order, changing
    /// nothing: the reconciliation's read of which events were delivered or
    /// are being delivered. One round trip for a store across the network.
    async fn peek(&self, _keys: &[StoreKey]) -> Result<Vec<Mark>, StoreError> {
        Err(StoreError::new(NoPeek))
    }

    /// Releases as `release` does, without awaiting, when this store can do
    /// that in place; `false` when it cannot and `release` must be awaited.
    /// A [`Lease`] dropped unsettled tries this first.
    fn release_in_place(&self, _key: &StoreKey, _token: u64) -> bool {
        false
    }

    /// Whether the store can answer now (readiness).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Since when (Unix milliseconds) this store remembers what it was told:
    /// the start of a store that lives in this process, which forgets on a
    /// restart; `None` for a store that outlives the process (Redis). Events
    /// settled before then are unknown to it, delivered or not.
    fn remembers_since_ms(&self) -> Option<u64> {
        None
    }

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
