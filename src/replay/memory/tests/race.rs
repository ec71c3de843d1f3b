//! The memory store under many threads at once, and its in-flight marks
//! left unsettled.

use super::*;

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
fn in_flight_marks_nobody_settles_are_swept_not_kept() {
    let (s, clock) = store();
    for i in 0..5000 {
        claimed(s.claim(&key(b"/r", &format!("left_{i}")), INFLIGHT));
    }
    assert_eq!(s.entry_count(), 5000);
    clock.advance(INFLIGHT);
    assert_eq!(s.entry_count(), 0, "expired marks are not counted");
    // New claims sweep the expired marks out as the shards fill again.
    for i in 0..5000 {
        claimed(s.claim(&key(b"/r", &format!("new_{i}")), INFLIGHT));
    }
    assert!(s.inflight.held() < 7500, "held {}", s.inflight.held());
    // A commit takes the mark out of the in-flight map: one place per id.
    let k = key(b"/r", "new_0");
    s.commit(&k, TTL);
    assert_eq!(s.peek(&k), Mark::Delivered);
    assert!(s.inflight.lock(&k).live(&k, Duration::ZERO).is_none());
}

/// Claims, commits and releases of the same ids from many threads at once:
/// the in-flight map and the cache change under one per-key lock, so an id
/// is never held by two deliveries at a time and never claimed again once
/// delivered (a commit that let a claim in between its two maps would).
#[test]
fn racing_claims_commits_and_releases_never_admit_twice() {
    use std::sync::atomic::AtomicU32;
    let s = Arc::new(MemoryStore::new(100_000, Arc::new(SystemClock::default())));
    let ids = 64;
    let holders: Arc<Vec<AtomicU32>> = Arc::new((0..ids).map(|_| AtomicU32::new(0)).collect());
    let delivered: Arc<Vec<AtomicU32>> = Arc::new((0..ids).map(|_| AtomicU32::new(0)).collect());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (s, holders, delivered) = (s.clone(), holders.clone(), delivered.clone());
            std::thread::spawn(move || {
                for n in 0..20_000u32 {
                    let id = ((n.wrapping_mul(2_654_435_761) >> 7) + t) as usize % ids;
                    let k = key(b"/r", &format!("evt_{id}"));
                    let Claim::Claimed(token) = s.claim(&k, INFLIGHT) else {
                        continue;
                    };
                    assert_eq!(
                        delivered[id].load(Ordering::SeqCst),
                        0,
                        "{id} claimed after delivery"
                    );
                    assert_eq!(
                        holders[id].fetch_add(1, Ordering::SeqCst),
                        0,
                        "{id} held twice"
                    );
                    let commit = n % 7 == 0;
                    if commit {
                        delivered[id].store(1, Ordering::SeqCst);
                    }
                    holders[id].fetch_sub(1, Ordering::SeqCst);
                    match commit {
                        true => s.commit(&k, TTL),
                        false => s.release(&k, token),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The proof the race ran: ids were delivered, and each is now a duplicate.
    let done = (0..ids)
        .filter(|i| delivered[*i].load(Ordering::SeqCst) == 1)
        .count();
    assert!(done > ids / 2, "only {done} of {ids} ids were delivered");
    for id in (0..ids).filter(|i| delivered[*i].load(Ordering::SeqCst) == 1) {
        assert_eq!(
            s.claim(&key(b"/r", &format!("evt_{id}")), INFLIGHT),
            Claim::Duplicate
        );
    }
}
