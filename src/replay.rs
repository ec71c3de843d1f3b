//! Replay memory: which event ids are being delivered or were delivered.
//!
//! The state machine per (route, event id), shared by every store:
//!
//! ```text
//!   absent --claim--> in flight(token) --commit--> delivered (for `ttl`)
//!                        |   \--release(token)--> absent
//!                        \--inflight_ttl passes--> absent
//! ```
//!
//! * `claim` is atomic: of two concurrent claims of one id exactly one wins.
//! * `commit` is called only after the upstream answered 2xx.
//! * `release` removes only the caller's own in-flight mark, never another
//!   request's claim nor a delivered mark.
//!
//! The memory store keeps entries in a bounded `moka` cache. Its admission
//! policy is set to LRU on purpose: moka's default (TinyLFU) may refuse to admit
//! a new key when the cache is full, which here would let a replay through.
//! With LRU a new id is always remembered; at capacity the least recently used
//! entry (in practice the oldest delivered id) is evicted, and that eviction is
//! counted so operators can size `capacity` (delivery rate x `ttl`).
//! Expiry is decided on the store's own [`Clock`], so tests can drive time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use crate::redis_store::{RedisStore, RedisStoreError};

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

pub use crate::claim::Claim;

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

/// One remembered id in 16 bytes (moka adds its own per-entry bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The in-flight claim's token, or [`DELIVERED`].
    token: u64,
    /// Clock time, in nanoseconds, after which the entry no longer counts.
    expires_ns: u64,
}

/// The token of a delivered entry (claim tokens start at 1).
const DELIVERED: u64 = 0;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Entry {
    fn new(token: u64, now: Duration, lifetime: Duration) -> Self {
        Entry {
            token,
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

impl moka::Expiry<Key, Entry> for Lifetime {
    fn expire_after_create(&self, _: &Key, v: &Entry, _: Instant) -> Option<Duration> {
        Some(v.left(self.0.now()))
    }
    fn expire_after_update(
        &self,
        _: &Key,
        v: &Entry,
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
    cache: Cache<Key, Entry, DigestState>,
    clock: Arc<dyn Clock>,
    next_token: AtomicU64,
    stats: Arc<StoreStats>,
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
            clock,
            next_token: AtomicU64::new(1),
            stats,
        }
    }

    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// Entries currently held (approximate: moka settles counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending maintenance (eviction); tests call it for exact counts.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Atomically claims `key` for one delivery lasting at most `inflight_ttl`.
    pub fn claim(&self, key: &Key, inflight_ttl: Duration) -> Claim {
        let now = self.clock.now();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut outcome = Claim::Claimed(token);
        self.cache.entry(*key).and_compute_with(|existing| {
            match existing.map(|e| e.into_value()) {
                Some(e) if !e.left(now).is_zero() => {
                    outcome = match e.token {
                        DELIVERED => Claim::Duplicate,
                        _ => Claim::InFlight {
                            retry_after: e.left(now),
                        },
                    };
                    Op::Nop
                }
                _ => Op::Put(Entry::new(token, now, inflight_ttl)),
            }
        });
        outcome
    }

    /// Marks `key` delivered for `ttl` (the upstream answered 2xx).
    pub fn commit(&self, key: &Key, ttl: Duration) {
        let now = self.clock.now();
        self.cache.insert(*key, Entry::new(DELIVERED, now, ttl));
    }

    /// Forgets `key` if, and only if, it is still this `token`'s in-flight mark.
    pub fn release(&self, key: &Key, token: u64) {
        self.cache
            .entry(*key)
            .and_compute_with(|existing| match existing {
                Some(e) if token != DELIVERED && e.value().token == token => Op::Remove,
                _ => Op::Nop,
            });
    }
}

/// A replay store failure (only the Redis store can fail).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(#[from] pub RedisStoreError);

/// The configured store.
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Atomically claims the event id on the route.
    pub async fn claim(
        &self,
        route: &[u8],
        event_id: &str,
        inflight_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.claim(&key(route, event_id), inflight_ttl)),
            Store::Redis(r) => Ok(r
                .claim(route, event_id, rand::random(), inflight_ttl)
                .await?),
        }
    }

    /// Marks the event id delivered for `ttl`.
    pub async fn commit(
        &self,
        route: &[u8],
        event_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.commit(&key(route, event_id), ttl);
                Ok(())
            }
            Store::Redis(r) => Ok(r.commit(route, event_id, ttl).await?),
        }
    }

    /// Forgets the event id if it is still this token's claim.
    pub async fn release(
        &self,
        route: &[u8],
        event_id: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.release(&key(route, event_id), token);
                Ok(())
            }
            Store::Redis(r) => Ok(r.release(route, event_id, token).await?),
        }
    }

    /// Whether the store can answer now.
    /// Stops the store's background work before the process exits.
    pub async fn close(&self) {
        if let Store::Memory(m) = self {
            m.run_pending_tasks();
        }
    }

    pub async fn ready(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => Ok(r.ping().await?),
        }
    }

    /// The memory store, for its local statistics.
    pub fn memory(&self) -> Option<&MemoryStore> {
        match self {
            Store::Memory(m) => Some(m),
            Store::Redis(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct ManualClock(Mutex<Duration>);
    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }
    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            *self.0.lock().unwrap()
        }
    }

    const INFLIGHT: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(900);

    fn store() -> (MemoryStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (MemoryStore::new(1000, clock.clone()), clock)
    }

    fn claimed(c: Claim) -> u64 {
        match c {
            Claim::Claimed(t) => t,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[test]
    fn key_depends_on_route_and_id() {
        assert_ne!(key(b"/a", "evt_1"), key(b"/b", "evt_1"));
        assert_ne!(key(b"/a", "evt_1"), key(b"/a", "evt_2"));
        assert_ne!(key(b"/a", "b\0c"), key(b"/a\0b", "c"));
        assert_eq!(key(b"/a", "evt_1"), key(b"/a", "evt_1"));
    }

    #[test]
    fn claim_commit_then_duplicate_until_ttl() {
        let (s, clock) = store();
        let k = key(b"/r", "evt_1");
        claimed(s.claim(&k, INFLIGHT));
        s.commit(&k, TTL);
        assert_eq!(s.claim(&k, INFLIGHT), Claim::Duplicate);
        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(s.claim(&k, INFLIGHT), Claim::Duplicate);
        clock.advance(Duration::from_millis(1));
        claimed(s.claim(&k, INFLIGHT));
    }

    #[test]
    fn in_flight_blocks_others_and_tells_how_long() {
        let (s, clock) = store();
        let k = key(b"/r", "evt_1");
        claimed(s.claim(&k, INFLIGHT));
        clock.advance(Duration::from_secs(20));
        assert_eq!(
            s.claim(&k, INFLIGHT),
            Claim::InFlight {
                retry_after: Duration::from_secs(40)
            }
        );
    }

    #[test]
    fn release_forgets_so_a_retry_is_admitted() {
        let (s, _) = store();
        let k = key(b"/r", "evt_1");
        let t = claimed(s.claim(&k, INFLIGHT));
        s.release(&k, t);
        claimed(s.claim(&k, INFLIGHT));
    }

    #[test]
    fn inflight_mark_expires_on_its_own() {
        let (s, clock) = store();
        let k = key(b"/r", "evt_1");
        claimed(s.claim(&k, INFLIGHT));
        clock.advance(INFLIGHT);
        claimed(s.claim(&k, INFLIGHT));
    }

    #[test]
    fn late_release_never_removes_another_claim_or_a_delivery() {
        let (s, clock) = store();
        let k = key(b"/r", "evt_1");
        let old = claimed(s.claim(&k, INFLIGHT));
        clock.advance(INFLIGHT);
        let new = claimed(s.claim(&k, INFLIGHT));
        s.release(&k, old);
        assert!(matches!(s.claim(&k, INFLIGHT), Claim::InFlight { .. }));
        s.commit(&k, TTL);
        s.release(&k, new);
        assert_eq!(s.claim(&k, INFLIGHT), Claim::Duplicate);
    }

    #[test]
    fn concurrent_claims_admit_exactly_one() {
        let s = Arc::new(MemoryStore::new(1000, Arc::new(SystemClock::default())));
        for round in 0..50 {
            let k = key(b"/r", &format!("evt_{round}"));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let s = s.clone();
                    std::thread::spawn(move || s.claim(&k, INFLIGHT))
                })
                .collect();
            let wins = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|c| matches!(c, Claim::Claimed(_)))
                .count();
            assert_eq!(wins, 1, "round {round}");
        }
    }

    #[test]
    fn at_capacity_new_ids_are_always_remembered() {
        let capacity = 100;
        let s = MemoryStore::new(capacity, Arc::new(SystemClock::default()));
        // Fill well past capacity; with TinyLFU many of these would never be admitted.
        for i in 0..(capacity * 3) {
            let k = key(b"/r", &format!("evt_{i}"));
            claimed(s.claim(&k, INFLIGHT));
            s.commit(&k, TTL);
            s.run_pending_tasks();
            // The id just delivered must be refused as a replay, even at capacity.
            assert_eq!(s.claim(&k, INFLIGHT), Claim::Duplicate, "id {i}");
        }
        s.run_pending_tasks();
        assert!(s.entry_count() <= capacity);
        assert!(s.stats().evicted_early.load(Ordering::Relaxed) >= capacity);
    }

    mod model {
        //! The store against a reference model under any interleaving of
        //! claim / commit / release / time passing (proptest).
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Op {
            Claim(u8),
            Commit(u8),
            Release(u8),
            /// Release with a stale token (a late release of an older claim).
            StaleRelease(u8),
            Advance(u16),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..4).prop_map(Op::Claim),
                (0u8..4).prop_map(Op::Commit),
                (0u8..4).prop_map(Op::Release),
                (0u8..4).prop_map(Op::StaleRelease),
                (1u16..2000).prop_map(Op::Advance),
            ]
        }

        #[derive(Clone, Copy, Debug)]
        enum M {
            InFlight(u64, Duration),
            Delivered(Duration),
        }

        proptest! {
            #[test]
            fn matches_the_reference_and_never_admits_twice_within_ttl(ops in prop::collection::vec(op(), 1..200)) {
                let inflight = Duration::from_millis(1500);
                let ttl = Duration::from_millis(4000);
                let clock = Arc::new(ManualClock::default());
                let store = MemoryStore::new(1000, clock.clone());
                let mut model: HashMap<u8, M> = HashMap::new();
                // The token each id was last claimed with (ours to commit/release).
                let mut tokens: HashMap<u8, u64> = HashMap::new();
                let mut old_tokens: HashMap<u8, u64> = HashMap::new();
                let mut delivered_at: HashMap<u8, Duration> = HashMap::new();
                for op in ops {
                    let now = clock.now();
                    match op {
                        Op::Advance(ms) => clock.advance(Duration::from_millis(ms as u64)),
                        Op::Claim(id) => {
                            let got = store.claim(&key(b"/r", &id.to_string()), inflight);
                            let want = match model.get(&id) {
                                Some(M::Delivered(exp)) if *exp > now => Some(Claim::Duplicate),
                                Some(M::InFlight(_, exp)) if *exp > now => Some(Claim::InFlight { retry_after: *exp - now }),
                                _ => None,
                            };
                            match (want, got) {
                                (None, Claim::Claimed(t)) => {
                                    // Never admitted twice within ttl of a delivery.
                                    if let Some(at) = delivered_at.get(&id) {
                                        prop_assert!(now >= *at + ttl, "re-admitted {id} {now:?} after delivery at {at:?}");
                                    }
                                    if let Some(old) = tokens.insert(id, t) {
                                        old_tokens.insert(id, old);
                                    }
                                    model.insert(id, M::InFlight(t, now + inflight));
                                }
                                (Some(w), g) => prop_assert_eq!(w, g),
                                (None, g) => prop_assert!(false, "expected a claim of {id}, got {g:?}"),
                            }
                        }
                        Op::Commit(id) => {
                            // Only a request holding a live claim commits.
                            if let (Some(M::InFlight(t, exp)), Some(mine)) = (model.get(&id).copied(), tokens.get(&id))
                                && t == *mine && exp > now
                            {
                                store.commit(&key(b"/r", &id.to_string()), ttl);
                                model.insert(id, M::Delivered(now + ttl));
                                delivered_at.insert(id, now);
                            }
                        }
                        Op::Release(id) | Op::StaleRelease(id) => {
                            let token = match op {
                                Op::Release(_) => tokens.get(&id).copied(),
                                _ => old_tokens.get(&id).copied(),
                            };
                            if let Some(t) = token {
                                store.release(&key(b"/r", &id.to_string()), t);
                                if let Some(M::InFlight(mt, _)) = model.get(&id)
                                    && *mt == t
                                {
                                    model.remove(&id);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
