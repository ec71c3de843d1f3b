//! How much memory the in-memory replay store needs per remembered event id:
//! fills a store with N delivered ids (default 1,000,000) and reports the
//! process's resident set before and after, from /proc/self/status.
//!
//! ```text
//! cargo run --release --example store_memory -- 1000000
//! cargo run --release --example store_memory -- 1000000 bare-moka
//! ```
//!
//! `bare-moka` measures the floor of the crate itself: a moka cache of
//! `u128` keys and `u64` values, no expiry, no listener, the same LRU policy.

use std::sync::Arc;
use std::time::Duration;

use persona_guard::replay::Claim;
use persona_guard::replay::memory::{MemoryStore, SystemClock, key};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A bare moka cache of the same size, for the crate's own per-entry cost.
fn bare_moka(n: u64) -> u64 {
    let cache = moka::sync::Cache::<u128, u64>::builder()
        .max_capacity(n)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build();
    for i in 0..n {
        cache.insert(
            u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            i,
        );
    }
    cache.run_pending_tasks();
    let count = cache.entry_count();
    std::mem::forget(cache); // measured below while still resident
    count
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kib();
    if std::env::args().nth(2).as_deref() == Some("bare-moka") {
        let entries = bare_moka(n);
        let after = rss_kib();
        let per_id = (after.saturating_sub(before) * 1024) as f64 / n as f64;
        println!(
            "{{\"ids\":{n},\"entries\":{entries},\"store\":\"bare-moka\",\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"bytes_per_id\":{per_id:.0}}}"
        );
        return;
    }
    let store = MemoryStore::new(n, Arc::new(SystemClock::default()));
    let ttl = Duration::from_secs(900);
    for i in 0..n {
        let k = key(b"/webhooks/persona", &format!("evt_{i:024}"));
        match store.claim(&k, Duration::from_secs(60)) {
            Claim::Claimed(_) => store.commit(&k, ttl),
            other => panic!("id {i}: {other:?}"),
        }
    }
    store.run_pending_tasks();
    let after = rss_kib();
    let per_id = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "{{\"ids\":{n},\"entries\":{},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"bytes_per_id\":{per_id:.0}}}",
        store.entry_count()
    );
}
