//! The in-flight marks of the memory store, beside (not inside) the moka
//! cache of delivered ids.
//!
//! A mark lives only while a delivery is in the app's hands: a handful at a
//! time, each written once and removed once. Keeping them out of moka makes
//! a delivery one cache write (the delivered mark) instead of two, and moka's
//! per-write bookkeeping (its write log, timer wheel and LRU order) is the
//! costliest part of a claim. Each shard's lock is also the store's per-key
//! lock: every change to a key, in either map, happens under its shard's
//! lock, so a claim, a commit, a renewal and a release of one key are
//! atomic with respect to each other.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{DigestState, Expiry, Key};

/// Shards of the in-flight marks (by the key's first byte): concurrent
/// claims of different ids rarely wait on each other.
const SHARDS: usize = 16;

/// A shard is swept of expired marks once it holds this many (and then
/// again at twice what the sweep left), so marks nobody settles (a spooled
/// delivery's, whose redelivery never came back for it) cannot pile up.
const FIRST_SWEEP: usize = 64;

/// One in-flight mark: its claim's token and when it stops counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub token: u64,
    pub until: Expiry,
}

impl Mark {
    fn live(&self, now: Duration) -> bool {
        !self.until.left(now).is_zero()
    }
}

pub(super) struct Shard {
    marks: HashMap<Key, Mark, DigestState>,
    sweep_at: usize,
}

impl Shard {
    /// The live mark of `key` at `now`, if any.
    pub fn live(&self, key: &Key, now: Duration) -> Option<Mark> {
        self.marks.get(key).copied().filter(|m| m.live(now))
    }

    pub fn put(&mut self, key: Key, mark: Mark, now: Duration) {
        self.marks.insert(key, mark);
        if self.marks.len() >= self.sweep_at {
            self.marks.retain(|_, m| m.live(now));
            self.sweep_at = (self.marks.len() * 2).max(FIRST_SWEEP);
        }
    }

    pub fn remove(&mut self, key: &Key) {
        self.marks.remove(key);
    }

    /// Removes `key`'s mark if it is `token`'s.
    pub fn remove_if(&mut self, key: &Key, token: u64) {
        if self.marks.get(key).is_some_and(|m| m.token == token) {
            self.marks.remove(key);
        }
    }

    fn live_count(&self, now: Duration) -> u64 {
        self.marks.values().filter(|m| m.live(now)).count() as u64
    }
}

/// The in-flight marks, sharded.
pub(super) struct Inflight {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Inflight {
    fn default() -> Self {
        let shard = || {
            Mutex::new(Shard {
                marks: HashMap::default(),
                sweep_at: FIRST_SWEEP,
            })
        };
        Inflight {
            shards: (0..SHARDS).map(|_| shard()).collect(),
        }
    }
}

impl Inflight {
    /// `key`'s shard, locked: the lock every change to `key` is made under.
    pub fn lock(&self, key: &Key) -> MutexGuard<'_, Shard> {
        locked(&self.shards[usize::from(key[0]) % SHARDS])
    }

    /// Live marks across the shards.
    pub fn live_count(&self, now: Duration) -> u64 {
        self.shards.iter().map(|s| locked(s).live_count(now)).sum()
    }
}

/// A shard, locked. A panic while a shard was held cannot leave a mark
/// half-written (each change is one map operation), so the data is still good.
fn locked(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
impl Inflight {
    /// Marks held, live or expired (what a sweep bounds).
    pub fn held(&self) -> usize {
        self.shards.iter().map(|s| locked(s).marks.len()).sum()
    }
}
