//! The Redis replay store: one replay memory shared by every replica.
//!
//! The same state machine as the memory store (see [`crate::replay`]), made atomic
//! across instances by Redis itself:
//!
//! * claim: `SET key inflight:<token> NX PX inflight_ttl` in a Lua script that,
//!   when the key exists, reports in the same round trip whether it is
//!   delivered or in flight and for how long. A key that already holds *this*
//!   claim's token answers "claimed" (see [retries](#retries));
//! * commit: `SET key delivered PX ttl`;
//! * release: a Lua compare-and-delete of *this* claim's value only, so a late
//!   release never deletes another instance's claim or a delivered mark;
//! * renew: a Lua compare-and-`PEXPIRE` of *this* claim's value only, run by
//!   the delivering instance's lease every `inflight_ttl / 3` (see
//!   [`crate::replay`]); a dead instance stops renewing and its mark expires.
//!
//! # Keys
//!
//! `<key_prefix><route path>:<event id>`, where the route path (the normalized
//! route, as bytes) has every `%` written `%25` and every `:` written `%3A`.
//! The route part therefore never contains `:`, so the first `:` after the
//! prefix ends it and everything after it is the event id (which may contain
//! `:`): distinct (route, event id) pairs always give distinct keys. Before,
//! route `/a:b` with event `c` and route `/a` with event `b:c` were both
//! `<prefix>/a:b:c`, and the second genuine event was answered `duplicate`.
//! For a route without `%` or `:` (the usual `/webhooks/persona`) the key is
//! the same as before, e.g. `persona-guard:/webhooks/persona:evt_123`, readable
//! with `redis-cli`; only keys of routes containing `%` or `:` changed.
//!
//! # Retries
//!
//! The client is `redis`'s `ConnectionManager`, which replaces its connection
//! only *after* a command failed on it. A connection that Redis closed while
//! idle (its `timeout` setting), that a NAT or load balancer cut, or that a
//! failover or restart broke, would make the next call fail although Redis is
//! healthy. So every call (claim, commit, release, renew, ping) is tried again
//! **once**, on the new connection, when its first attempt failed because the
//! connection was dropped (broken pipe, reset, aborted, refused, unexpected
//! EOF: [`redis::RedisError::is_connection_dropped`]; the manager has already
//! replaced the connection when it returns one of these). Only the second
//! failure is a store error. Both attempts share one deadline: a call never
//! takes longer than `redis_timeout` in all.
//!
//! A retry is safe for every call, even when the first attempt did run in
//! Redis and only its reply was lost with the connection: commit (`SET
//! delivered`), release (compare-and-delete), renew (compare-and-`PEXPIRE`)
//! and `PING` are idempotent, and the
//! claim is retried with the *same* token, which the claim script recognises:
//! finding its own `inflight:<token>` it answers "claimed" (renewing the
//! lease) instead of "in flight". Without that, a claim whose first attempt
//! ran would be answered 409 by its own mark, and that mark, which nobody
//! would settle, would hold the event for `inflight_ttl`. (Tokens are random
//! 64-bit values, one per claim: another delivery holding the same token is a
//! 2^-64 chance.)
//!
//! A call that **timed out** is not retried. Its budget is spent (the bound is
//! per call, not per attempt), and a timeout says nothing about whether Redis
//! ran the command: it may still be queued behind a slow command or a paused
//! server, so a second attempt would only add load to a Redis that is already
//! late. (For a claim the same-token rule would make such a retry harmless,
//! but it could not answer sooner than the first attempt; the first attempt's
//! late answer is handled below instead.)
//!
//! A call answered **`READONLY`** is tried once more too, on a *new*
//! connection: after a failover behind one address (a managed Redis, a
//! Kubernetes Service, a Sentinel-managed name) the held connection still
//! reaches the old primary, now a replica, and `ConnectionManager` never
//! replaces a connection that is alive. The new one is made to the same
//! address, which reaches the new primary. A replica refuses a write before
//! running it, so the retry cannot apply anything twice.
//!
//! # A claim that timed out
//!
//! A claim that the caller gave up on (it timed out, or the request was
//! cancelled) may still run in Redis later and leave an in-flight mark that
//! nobody settles, which would answer 409 to Persona's retries for up to
//! `inflight_ttl`. Claims therefore run as tasks on the store's own runtime
//! that outlive their caller: the task keeps waiting for the answer (up to
//! `inflight_ttl`, after which any mark it made has expired by itself) and
//! releases the claim by its token when nobody else will settle it: the answer
//! is "claimed" but the caller is gone (also when the answer reached the
//! channel but the request was dropped before reading it), or the claim may
//! have run without its answer arriving (the connection dropped mid-call, or
//! no answer within `inflight_ttl`). The release is the usual
//! compare-and-delete, so it can only remove this claim's own mark, and it is
//! a no-op if the claim never ran.
//!
//! The client runs on a small runtime of its own so it outlives no pingora
//! service and is shared by all of them: every call runs there as a task, so
//! the connection and whatever it spawns live there too, and
//! [`ReplayStore::close`] (or dropping the store) stops all of it. Every call
//! is bounded by `timeout`.
//!
//! # Layout
//!
//! [`keys`] names the keys, `conn` holds the connection and the calls made on
//! it, `claim` the claim task and its late release; this file is the store.

mod claim;
pub(crate) mod conn;
pub mod keys;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use conn::Inner;
pub use conn::RedisStoreError;

use crate::config::RedisSettings;
use crate::replay::{Claim, Mark, ReplayStore, StoreError, StoreKey};

impl From<RedisStoreError> for StoreError {
    fn from(e: RedisStoreError) -> Self {
        StoreError::new(e)
    }
}

/// A key this store did not derive (a bug: keys only go back to their store).
#[derive(Debug, thiserror::Error)]
#[error("a replay key that the redis store did not make")]
struct ForeignKey;

fn name(key: &StoreKey) -> Result<&[u8], StoreError> {
    match key {
        StoreKey::Name(k) => Ok(k),
        StoreKey::Digest(_) => Err(StoreError::new(ForeignKey)),
    }
}

pub struct RedisStore {
    inner: Arc<Inner>,
    prefix: String,
    /// Drives the connection and every call. Shut down in the background on
    /// close or drop, which is allowed from inside another runtime (a
    /// blocking shutdown is not).
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl RedisStore {
    /// The store `settings` describe. The connection is made lazily, on the
    /// first call, and re-made after failures; a reload that changes the
    /// settings builds a new store.
    pub fn new(settings: &RedisSettings) -> Result<Self, RedisStoreError> {
        Self::open(
            &settings.url,
            settings.password.as_ref().map(|p| p.expose()),
            &settings.key_prefix,
            settings.timeout,
        )
    }

    fn open(
        url: &str,
        password: Option<&[u8]>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisStoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| RedisStoreError::Setup(e.to_string()))?;
        let inner = Inner::connect(url, password, timeout, &runtime)?;
        Ok(RedisStore {
            inner: Arc::new(inner),
            prefix: prefix.to_string(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// The key name of an event id on a route (see [`keys`]).
    pub fn key(&self, route: &[u8], event_id: &str) -> Vec<u8> {
        keys::key(&self.prefix, route, event_id)
    }

    /// Claims `key` with this claim's `token` for one delivery (at most
    /// `inflight_ttl` unless renewed). A claim its caller gave up on is still
    /// settled (see the module documentation).
    pub async fn claim(
        &self,
        key: &[u8],
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, RedisStoreError> {
        claim::claim(&self.inner, key.to_vec(), token, inflight_ttl).await
    }

    /// Takes over `old`'s in-flight mark with `token` (see
    /// [`ReplayStore::take_over`]).
    pub async fn take_over(
        &self,
        key: &[u8],
        old: u64,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, RedisStoreError> {
        let key = key.to_vec();
        let (code, pttl) = self
            .inner
            .on_runtime(
                |inner| async move { inner.take_over(&key, old, token, inflight_ttl).await },
            )
            .await?;
        Ok(match code {
            1 => Claim::Claimed(token),
            2 => Claim::Duplicate,
            _ => Claim::InFlight {
                retry_after: Duration::from_millis(pttl.max(0) as u64),
            },
        })
    }

    pub async fn commit(&self, key: &[u8], ttl: Duration) -> Result<(), RedisStoreError> {
        let key = key.to_vec();
        self.inner
            .on_runtime(|inner| async move { inner.commit(&key, ttl).await })
            .await
    }

    pub async fn release(&self, key: &[u8], token: u64) -> Result<(), RedisStoreError> {
        let key = key.to_vec();
        self.inner
            .on_runtime(|inner| async move { inner.release(&key, token).await.map(|_| ()) })
            .await
    }

    /// Extends this token's in-flight mark to `inflight_ttl`; whether it still held it.
    pub async fn renew(
        &self,
        key: &[u8],
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<bool, RedisStoreError> {
        let key = key.to_vec();
        self.inner
            .on_runtime(|inner| async move { inner.renew(&key, token, inflight_ttl).await })
            .await
    }

    /// What each key holds now (one `MGET`), changing nothing.
    pub async fn peek(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Mark>, RedisStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .on_runtime(|inner| async move { inner.peek(&keys).await })
            .await
    }

    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        self.inner
            .on_runtime(|inner| async move { inner.ping().await })
            .await
    }

    /// Stops the runtime, and with it the connection and every task on it.
    fn shut_down(&self) {
        conn::shut_down(&self.runtime);
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    fn key(&self, route: &[u8], event_id: &str) -> StoreKey {
        StoreKey::Name(RedisStore::key(self, route, event_id).into())
    }

    /// Each claim gets a random token (see "Retries" in the module documentation).
    async fn claim(&self, key: &StoreKey, inflight_ttl: Duration) -> Result<Claim, StoreError> {
        Ok(RedisStore::claim(self, name(key)?, rand::random(), inflight_ttl).await?)
    }

    async fn commit(&self, key: &StoreKey, ttl: Duration) -> Result<(), StoreError> {
        Ok(RedisStore::commit(self, name(key)?, ttl).await?)
    }

    async fn release(&self, key: &StoreKey, token: u64) -> Result<(), StoreError> {
        Ok(RedisStore::release(self, name(key)?, token).await?)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(RedisStore::renew(self, name(key)?, token, inflight_ttl).await?)
    }

    async fn take_over(
        &self,
        key: &StoreKey,
        old: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let token = rand::random::<u64>();
        Ok(RedisStore::take_over(self, name(key)?, old, token, inflight_ttl).await?)
    }

    async fn peek(&self, keys: &[StoreKey]) -> Result<Vec<Mark>, StoreError> {
        let names = keys
            .iter()
            .map(|k| name(k).map(<[u8]>::to_vec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedisStore::peek(self, names).await?)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        Ok(self.ping().await?)
    }

    async fn close(&self) {
        self.shut_down();
    }
}
