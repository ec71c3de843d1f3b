//! The embedded spool's in-memory index (see [`super`]): per route, id →
//! `live_since_ms` and size, live and dead, and what `take` handed out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::sync::MutexGuard;

use super::Inner;
use crate::spool::EntryId;

#[derive(Debug, Default)]
pub(super) struct State {
    /// By route dir name.
    pub(super) routes: HashMap<String, RouteIndex>,
    /// Indexed entries' sizes, unreadable files' lengths, and puts under way.
    pub(super) bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct RouteIndex {
    /// id → (live_since_ms, size).
    pub(super) live: BTreeMap<EntryId, (u64, u64)>,
    pub(super) dead: BTreeMap<EntryId, (u64, u64)>,
    /// How many live entries have each `live_since_ms`: the oldest is the
    /// first key, so `stats` needs no walk over the entries.
    pub(super) since: BTreeMap<u64, usize>,
    /// Live ids handed out by `take` (and not yet removed or buried).
    pub(super) handed: HashSet<EntryId>,
    pub(super) bytes: u64,
}

impl RouteIndex {
    pub(super) fn add_live(&mut self, id: EntryId, since: u64, size: u64) {
        self.live.insert(id, (since, size));
        *self.since.entry(since).or_default() += 1;
        self.bytes += size;
    }

    /// Drops a live entry from the index; its size, when it was there.
    pub(super) fn drop_live(&mut self, id: &str) -> Option<(u64, u64)> {
        self.handed.remove(id);
        let (since, size) = self.live.remove(id)?;
        if let Some(n) = self.since.get_mut(&since) {
            *n -= 1;
            if *n == 0 {
                self.since.remove(&since);
            }
        }
        self.bytes -= size;
        Some((since, size))
    }

    pub(super) fn add_dead(&mut self, id: EntryId, since: u64, size: u64) {
        self.dead.insert(id, (since, size));
        self.bytes += size;
    }

    pub(super) fn drop_dead(&mut self, id: &str) -> Option<(u64, u64)> {
        let v = self.dead.remove(id)?;
        self.bytes -= v.1;
        Some(v)
    }

    pub(super) fn drop(&mut self, id: &str, dead: bool) -> Option<(u64, u64)> {
        if dead {
            self.drop_dead(id)
        } else {
            self.drop_live(id)
        }
    }
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the index as it was between two
        // consistent steps at worst; serving on beats failing every call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an entry that turned out unreadable out of the index: its
    /// size moves from the route to the file's length (it still takes disk).
    pub(super) fn mark_bad(&self, rdir: &str, sub: &str, id: &str, dead: bool) {
        let len = fs::metadata(self.path(rdir, sub, id)).map_or(0, |m| m.len());
        let mut st = self.lock();
        let Some(ix) = st.routes.get_mut(rdir) else {
            return;
        };
        let Some((_, size)) = ix.drop(id, dead) else {
            return;
        };
        st.bytes = st.bytes - size + len;
    }

    /// Forgets an entry that vanished from disk behind our back.
    pub(super) fn forget(&self, rdir: &str, id: &str, dead: bool) {
        let mut st = self.lock();
        let Some(ix) = st.routes.get_mut(rdir) else {
            return;
        };
        if let Some((_, size)) = ix.drop(id, dead) {
            st.bytes -= size;
        }
    }
}
