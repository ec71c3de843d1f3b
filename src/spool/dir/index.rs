//! The embedded spool's in-memory index (see [`super`]): per route, id →
//! `live_since_ms` and size, live and dead, and what `take` handed out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::MutexGuard;

use super::{DEAD, EXT, Inner, LIVE};
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
    /// What in `live/` and `dead/` is not a readable entry, by (in `dead/`,
    /// file name): its length (counted in [`State::bytes`], not in `bytes`).
    /// Kept on disk, never handed out; `GET /spool`'s `unreadable`.
    pub(super) bad: BTreeMap<(bool, String), u64>,
    /// Live entries that must never be handed out (delivered, or written
    /// without a 202) whose file could not be removed yet: whether a
    /// tombstone records them (`false`: only this process's memory does).
    pub(super) gone: BTreeMap<EntryId, bool>,
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

    /// Sets aside an entry that turned out unreadable (`reason`, logged once
    /// with its file name): out of the index, never handed out, counted as
    /// unreadable; its size moves from the route to the file's length `len`
    /// (it still takes disk).
    pub(super) fn mark_bad(&self, rdir: &str, id: &str, dead: bool, reason: &str, len: u64) {
        let sub = if dead { DEAD } else { LIVE };
        self.note_bad(&self.path(rdir, sub, id), reason);
        let mut st = self.lock();
        let st = &mut *st;
        let ix = st.routes.entry(rdir.to_owned()).or_default();
        if let Some((_, size)) = ix.drop(id, dead) {
            st.bytes -= size;
        }
        if ix.bad.insert((dead, format!("{id}{EXT}")), len).is_none() {
            st.bytes += len;
        }
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
