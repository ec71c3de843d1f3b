//! The memory store: its state machine on a manual clock, capacity, a
//! reference model (proptest), and the [`Lease`] of a claim over it.

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
fn renew_extends_only_the_tokens_own_mark() {
    let (s, clock) = store();
    let k = key(b"/r", "evt_1");
    let t = claimed(s.claim(&k, INFLIGHT));
    // Renewed before it expires, the mark outlives its first lifetime...
    clock.advance(Duration::from_secs(40));
    assert!(s.renew(&k, t, INFLIGHT));
    clock.advance(Duration::from_secs(40));
    assert_eq!(
        s.claim(&k, INFLIGHT),
        Claim::InFlight {
            retry_after: Duration::from_secs(20)
        }
    );
    // ...another token renews nothing...
    assert!(!s.renew(&k, t + 1000, INFLIGHT));
    assert!(!s.renew(&k, DELIVERED, INFLIGHT));
    clock.advance(Duration::from_secs(20));
    // ...and once expired it is gone: a late renewal does not bring it back,
    // nor extend the claim that replaced it.
    assert!(!s.renew(&k, t, INFLIGHT));
    let next = claimed(s.claim(&k, INFLIGHT));
    assert!(!s.renew(&k, t, INFLIGHT));
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        s.claim(&k, INFLIGHT),
        Claim::InFlight {
            retry_after: Duration::from_secs(30)
        }
    );
    // A delivered mark is never renewed (nor shortened) by its old claim.
    s.commit(&k, TTL);
    assert!(!s.renew(&k, next, INFLIGHT));
    clock.advance(TTL - Duration::from_millis(1));
    assert_eq!(s.claim(&k, INFLIGHT), Claim::Duplicate);
}

#[test]
fn a_retry_two_hours_later_is_a_duplicate_under_the_default_ttl() {
    let default = |key| {
        let text = crate::config::schema::default_str(key).unwrap();
        humantime::parse_duration(text).unwrap()
    };
    let (inflight_ttl, ttl) = (default("replay.inflight_ttl"), default("replay.ttl"));
    let (s, clock) = store();
    let k = key(b"/r", "evt_1");
    claimed(s.claim(&k, inflight_ttl));
    s.commit(&k, ttl);
    // Persona's retries come ~3 s, 64 s, 729 s, 4096 s (68 min), ... after the
    // first attempt; the last of them ~51.3 h after it.
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(s.claim(&k, inflight_ttl), Claim::Duplicate);
    clock.advance(Duration::from_secs(184_822 - 2 * 3600));
    assert_eq!(s.claim(&k, inflight_ttl), Claim::Duplicate);
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

mod lease {
    //! What a winning [`replay::claim`] hands out, over the memory store.
    use super::*;
    use crate::replay::{self, Lease};

    fn shared() -> Arc<dyn ReplayStore> {
        Arc::new(MemoryStore::new(1000, Arc::new(ManualClock::default())))
    }

    async fn claim(store: &Arc<dyn ReplayStore>, id: &str) -> Claim<Lease> {
        replay::claim(store, b"/r", id, INFLIGHT).await.unwrap()
    }

    async fn lease(store: &Arc<dyn ReplayStore>, id: &str) -> Lease {
        match claim(store, id).await {
            Claim::Claimed(lease) => lease,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    /// The store's clock on tokio's time, which the test pauses: sleeps
    /// advance it at once and exactly, however loaded the machine.
    struct TokioClock(tokio::time::Instant);
    impl Clock for TokioClock {
        fn now(&self) -> Duration {
            self.0.elapsed()
        }
    }

    /// A lease with a short `inflight_ttl`: its renewal keeps the mark for
    /// several lifetimes, and stops once it is settled. On paused time.
    #[tokio::test(start_paused = true)]
    async fn a_lease_renews_its_mark_until_it_is_settled() {
        const SHORT: Duration = Duration::from_secs(3);
        let store: Arc<dyn ReplayStore> = Arc::new(MemoryStore::new(
            1000,
            Arc::new(TokioClock(tokio::time::Instant::now())),
        ));
        let Claim::Claimed(lease) = replay::claim(&store, b"/r", "evt_1", SHORT).await.unwrap()
        else {
            panic!("expected a claim")
        };
        tokio::time::sleep(SHORT * 4).await;
        match replay::claim(&store, b"/r", "evt_1", SHORT).await.unwrap() {
            Claim::InFlight { retry_after } => assert!(retry_after <= SHORT, "{retry_after:?}"),
            other => panic!("expected in flight, got {other:?}"),
        }
        let key = lease.key().clone();
        lease.commit(TTL).await;
        tokio::time::sleep(SHORT).await;
        assert!(matches!(
            replay::claim(&store, b"/r", "evt_1", SHORT).await.unwrap(),
            Claim::Duplicate
        ));
        // A stale renewal of the settled lease changes nothing.
        assert!(!store.renew(&key, 1, SHORT).await.unwrap());
    }

    #[tokio::test]
    async fn carries_the_key_derived_at_the_claim_and_its_own_token() {
        let store = shared();
        let (a, b) = (lease(&store, "evt_1").await, lease(&store, "evt_2").await);
        assert_eq!(a.key(), &store.key(b"/r", "evt_1"));
        assert_eq!(a.key(), &StoreKey::Digest(key(b"/r", "evt_1")));
        assert_ne!(a.token(), b.token());
    }

    #[tokio::test]
    async fn dropped_unsettled_it_releases_so_the_id_can_be_claimed_again() {
        let store = shared();
        let first = lease(&store, "evt_1").await;
        assert!(matches!(
            claim(&store, "evt_1").await,
            Claim::InFlight { .. }
        ));
        drop(first);
        // Released in place: at once, no task to wait for.
        lease(&store, "evt_1").await;
    }

    #[test]
    fn dropped_outside_a_runtime_it_still_releases() {
        let store = shared();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt.block_on(lease(&store, "evt_1"));
        drop(first);
        rt.block_on(lease(&store, "evt_1"));
    }

    #[tokio::test]
    async fn committed_it_makes_the_id_a_duplicate_and_its_drop_changes_nothing() {
        let store = shared();
        lease(&store, "evt_1").await.commit(TTL).await;
        assert!(matches!(claim(&store, "evt_1").await, Claim::Duplicate));
        assert!(matches!(claim(&store, "evt_1").await, Claim::Duplicate));
    }

    #[tokio::test]
    async fn released_it_admits_a_retry() {
        let store = shared();
        lease(&store, "evt_1").await.release().await;
        lease(&store, "evt_1").await.commit(TTL).await;
        assert!(matches!(claim(&store, "evt_1").await, Claim::Duplicate));
    }

    #[tokio::test]
    async fn a_stale_lease_never_releases_the_claim_that_replaced_it() {
        let clock = Arc::new(ManualClock::default());
        let store: Arc<dyn ReplayStore> = Arc::new(MemoryStore::new(1000, clock.clone()));
        let stale = lease(&store, "evt_1").await;
        clock.advance(INFLIGHT);
        let current = lease(&store, "evt_1").await;
        drop(stale);
        assert!(matches!(
            claim(&store, "evt_1").await,
            Claim::InFlight { .. }
        ));
        current.commit(TTL).await;
        assert!(matches!(claim(&store, "evt_1").await, Claim::Duplicate));
    }

    #[tokio::test]
    async fn stats_are_local_and_exact() {
        let store = shared();
        lease(&store, "evt_1").await.commit(TTL).await;
        let _held = lease(&store, "evt_2").await;
        let stats = store.local_stats().unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(stats.evicted_early, 0);
    }
}

#[test]
fn take_over_swaps_only_the_old_tokens_mark_in_one_step() {
    let (s, clock) = store();
    let k = key(b"/r", "evt_1");
    let old = claimed(s.claim(&k, INFLIGHT));
    // The old token's live mark passes to a new token...
    let new = claimed(s.take_over(&k, old, INFLIGHT));
    assert_ne!(new, old);
    // ...which the old holder can no longer renew, and a claim finds held.
    assert!(!s.renew(&k, old, INFLIGHT));
    assert!(s.renew(&k, new, INFLIGHT));
    assert!(matches!(s.claim(&k, INFLIGHT), Claim::InFlight { .. }));
    // Another delivery's mark is not taken over: answered as a claim.
    assert!(matches!(
        s.take_over(&k, old, INFLIGHT),
        Claim::InFlight { retry_after } if retry_after == INFLIGHT
    ));
    // An expired or absent mark is simply claimed.
    clock.advance(INFLIGHT);
    claimed(s.take_over(&k, old, INFLIGHT));
    claimed(s.take_over(&key(b"/r", "evt_2"), 12345, INFLIGHT));
    // A delivered id is a duplicate, whatever token asks.
    s.commit(&k, TTL);
    assert_eq!(s.take_over(&k, old, INFLIGHT), Claim::Duplicate);
    assert_eq!(s.take_over(&k, DELIVERED, INFLIGHT), Claim::Duplicate);
}

#[test]
fn peek_reads_each_state_and_changes_nothing() {
    let (s, clock) = store();
    let (a, b, c) = (key(b"/r", "a"), key(b"/r", "b"), key(b"/r", "c"));
    let t = claimed(s.claim(&a, INFLIGHT));
    s.claim(&b, INFLIGHT);
    s.commit(&b, TTL);
    assert_eq!(
        [s.peek(&a), s.peek(&b), s.peek(&c)],
        [Mark::InFlight, Mark::Delivered, Mark::Absent]
    );
    // Peeking claimed nothing: the absent id is still free, the mark still a's.
    claimed(s.claim(&c, INFLIGHT));
    assert!(s.renew(&a, t, INFLIGHT));
    clock.advance(INFLIGHT * 2);
    assert_eq!(s.peek(&a), Mark::Absent);
    assert_eq!(s.peek(&b), Mark::Delivered);
    clock.advance(TTL);
    assert_eq!(s.peek(&b), Mark::Absent);
}

mod race;
