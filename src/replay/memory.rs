//! The in-memory replay store (one process).
//!
//! Delivered ids live in a bounded `moka` cache; the few in-flight marks of
//! deliveries in the app's hands live beside it ([`inflight`]), so that a
//! delivery is one cache write. The cache's admission policy is set to LRU
//! on purpose: moka's default (TinyLFU) may refuse to admit a new key when the
//! cache is full, which here would let a replay through. With LRU a new id is
//! always remembered; at capacity the least recently used entry (in practice
//! the oldest delivered id) is evicted, and that eviction is counted so
//! operators can size `capacity` (delivery rate x `ttl`).
//! Expiry is decided on the store's own [`Clock`], so tests can drive time.

mod inflight;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use super::{Claim, LocalStats, Mark, ReplayStore, StoreError, StoreKey};

/// A fixed-size key: the first 16 bytes of SHA-256(len(route), route, event id).
pub type Key = [u8; 16];

/// Derives the store key of an event id on a route.
pub fn key(route: &[u8], event_id: &str) -> Key {
    let mut h = Sha256::new();
    h.update((route.len() as u64).to_le_bytes());
    h.update(route);
    h.update(event_id.as_bytes());
    let digest = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&digest[..16]);
    k
}

/// Time as the store sees it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The token no claim ever gets (see [`fresh_token`]): a claim is a
/// take-over from it, and it never matches a live mark.
const DELIVERED: u64 = 0;

/// A claim's token: 64 random bits, never [`DELIVERED`]. Random rather than a
/// counter so that tokens are unique across processes and restarts: a spool
/// entry left by an earlier process carries its claim's token, and a counter
/// restarting at 1 would hand a live request of the new process the same
/// token, letting the redelivery take over (and send beside) that request's
/// mark. Two random tokens meet with odds of 2^-64 per pair.
fn fresh_token() -> u64 {
    loop {
        let t = rand::random::<u64>();
        if t != DELIVERED {
            return t;
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// When a mark stops counting: the store-clock time, in nanoseconds. A
/// delivered id is remembered as this alone, 8 bytes (moka adds its own
/// per-entry bookkeeping); an in-flight mark carries one beside its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiry {
    expires_ns: u64,
}

impl Expiry {
    fn new(now: Duration, lifetime: Duration) -> Self {
        Expiry {
            expires_ns: nanos(now).saturating_add(nanos(lifetime)),
        }
    }

    /// Time left at `now` (zero once expired).
    fn left(&self, now: Duration) -> Duration {
        Duration::from_nanos(self.expires_ns.saturating_sub(nanos(now)))
    }
}

/// moka drops an entry once its own lifetime has passed; the lifetime is read
/// off the entry against the store's clock, so moka and `claim` agree.
struct Lifetime(Arc<dyn Clock>);

impl moka::Expiry<Key, Expiry> for Lifetime {
    fn expire_after_create(&self, _: &Key, v: &Expiry, _: Instant) -> Option<Duration> {
        Some(v.left(self.0.now()))
    }
    fn expire_after_update(
        &self,
        _: &Key,
        v: &Expiry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.left(self.0.now()))
    }
}

/// Keys are already uniform SHA-256 digests: hashing them again with SipHash
/// (moka's default) is wasted work. This folds the bytes with one multiply per word.
#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type DigestState = std::hash::BuildHasherDefault<DigestHasher>;

/// Counters the metrics module reads.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Entries evicted for room before they expired.
    pub evicted_early: AtomicU64,
}

/// The in-memory store (one process).
pub struct MemoryStore {
    /// Delivered ids.
    cache: Cache<Key, Expiry, DigestState>,
    /// In-flight marks; their shard locks serialise every change to a key.
    inflight: inflight::Inflight,
    clock: Arc<dyn Clock>,
    stats: Arc<StoreStats>,
    /// When the store was made (Unix milliseconds): it knows nothing older.
    started_ms: u64,
}

impl MemoryStore {
    /// A store remembering at most `capacity` ids.
    pub fn new(capacity: u64, clock: Arc<dyn Clock>) -> Self {
        let stats = Arc::new(StoreStats::default());
        let listener_stats = stats.clone();
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Lifetime(clock.clone()))
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    listener_stats.evicted_early.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(DigestState::default());
        MemoryStore {
            cache,
            inflight: inflight::Inflight::default(),
            clock,
            stats,
            started_ms: crate::clock::unix_now().as_millis() as u64,
        }
    }

    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// Ids currently remembered, delivered or in flight (approximate: moka
    /// settles its count lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count() + self.inflight.live_count(self.clock.now())
    }

    /// Runs moka's pending maintenance (eviction); tests call it for exact counts.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Atomically claims `key` for one delivery lasting at most `inflight_ttl`:
    /// a take-over that no mark matches (`DELIVERED` is never a claim's token).
    pub fn claim(&self, key: &Key, inflight_ttl: Duration) -> Claim {
        self.take_over(key, DELIVERED, inflight_ttl)
    }

    /// The delivered mark of `key`, if it still counts at `now`.
    fn delivered(&self, key: &Key, now: Duration) -> Option<Expiry> {
        self.cache.get(key).filter(|e| !e.left(now).is_zero())
    }

    /// Marks `key` delivered for `ttl` (the upstream answered 2xx); its
    /// in-flight mark, whoever's, goes.
    pub fn commit(&self, key: &Key, ttl: Duration) {
        let mut shard = self.inflight.lock(key);
        let now = self.clock.now();
        self.cache.insert(*key, Expiry::new(now, ttl));
        shard.remove(key);
    }

    /// Extends `key`'s in-flight mark to `inflight_ttl` from now if, and only
    /// if, it is still this `token`'s and has not expired; whether it was.
    pub fn renew(&self, key: &Key, token: u64, inflight_ttl: Duration) -> bool {
        let mut shard = self.inflight.lock(key);
        let now = self.clock.now();
        match shard.live(key, now) {
            Some(m) if token != DELIVERED && m.token == token => {
                shard.put(*key, mark(token, now, inflight_ttl), now);
                true
            }
            _ => false,
        }
    }

    /// Gives `key` a new token's in-flight mark for `inflight_ttl` when it is
    /// absent, expired or still `old`'s mark; otherwise `Duplicate` (delivered) or
    /// `InFlight` (another's mark). One atomic step: no other claim can come between.
    pub fn take_over(&self, key: &Key, old: u64, inflight_ttl: Duration) -> Claim {
        let mut shard = self.inflight.lock(key);
        let now = self.clock.now();
        if self.delivered(key, now).is_some() {
            return Claim::Duplicate;
        }
        if let Some(m) = shard.live(key, now)
            && (m.token != old || old == DELIVERED)
        {
            return Claim::InFlight {
                retry_after: m.until.left(now),
            };
        }
        let token = fresh_token();
        shard.put(*key, mark(token, now, inflight_ttl), now);
        Claim::Claimed(token)
    }

    /// What `key` holds now, changing nothing.
    pub fn peek(&self, key: &Key) -> Mark {
        let shard = self.inflight.lock(key);
        let now = self.clock.now();
        if self.delivered(key, now).is_some() {
            Mark::Delivered
        } else if shard.live(key, now).is_some() {
            Mark::InFlight
        } else {
            Mark::Absent
        }
    }

    /// Forgets `key` if, and only if, it is still this `token`'s in-flight mark.
    pub fn release(&self, key: &Key, token: u64) {
        if token != DELIVERED {
            self.inflight.lock(key).remove_if(key, token);
        }
    }
}

/// An in-flight mark of `token` living `lifetime` from `now`.
fn mark(token: u64, now: Duration, lifetime: Duration) -> inflight::Mark {
    inflight::Mark {
        token,
        until: Expiry::new(now, lifetime),
    }
}

/// A key this store did not derive (keys only ever go back to the store that
/// made them, so this is a bug, answered as a store failure, not a panic).
#[derive(Debug, thiserror::Error)]
#[error("a replay key that the memory store did not make")]
struct ForeignKey;

fn digest(key: &StoreKey) -> Result<&Key, StoreError> {
    match key {
        StoreKey::Digest(k) => Ok(k),
        StoreKey::Name(_) => Err(StoreError::new(ForeignKey)),
    }
}

#[async_trait]
impl ReplayStore for MemoryStore {
    fn key(&self, route: &[u8], event_id: &str) -> StoreKey {
        StoreKey::Digest(key(route, event_id))
    }

    async fn claim(&self, key: &StoreKey, inflight_ttl: Duration) -> Result<Claim, StoreError> {
        Ok(MemoryStore::claim(self, digest(key)?, inflight_ttl))
    }

    async fn commit(&self, key: &StoreKey, ttl: Duration) -> Result<(), StoreError> {
        MemoryStore::commit(self, digest(key)?, ttl);
        Ok(())
    }

    async fn release(&self, key: &StoreKey, token: u64) -> Result<(), StoreError> {
        MemoryStore::release(self, digest(key)?, token);
        Ok(())
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(MemoryStore::renew(self, digest(key)?, token, inflight_ttl))
    }

    async fn take_over(
        &self,
        key: &StoreKey,
        old: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        Ok(MemoryStore::take_over(
            self,
            digest(key)?,
            old,
            inflight_ttl,
        ))
    }

    async fn peek(&self, keys: &[StoreKey]) -> Result<Vec<Mark>, StoreError> {
        keys.iter()
            .map(|k| Ok(MemoryStore::peek(self, digest(k)?)))
            .collect()
    }

    fn release_in_place(&self, key: &StoreKey, token: u64) -> bool {
        match digest(key) {
            Ok(k) => {
                MemoryStore::release(self, k, token);
                true
            }
            Err(_) => false,
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn remembers_since_ms(&self) -> Option<u64> {
        Some(self.started_ms)
    }

    fn local_stats(&self) -> Option<LocalStats> {
        self.run_pending_tasks();
        Some(LocalStats {
            entries: self.entry_count(),
            evicted_early: self.stats.evicted_early.load(Ordering::Relaxed),
        })
    }

    /// Nothing runs in the background: moka maintains the cache on use.
    async fn close(&self) {}
}

#[cfg(test)]
mod tests;
