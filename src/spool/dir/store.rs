//! The embedded spool's [`SpoolStore`] calls (see [`super`]).

use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::files::{Load, mkdir_durable, route_dir, sync_dir, unavailable, valid_id};
use super::{DEAD, DirSpool, Inner, LIVE};
use crate::spool::{Entry, EntryId, Record, RouteStats, SpoolError, SpoolStore};

/// Un-marks `ids` as handed out when dropped with any left (see `take`).
struct Unhand {
    inner: Arc<Inner>,
    rdir: String,
    ids: Vec<EntryId>,
}

impl Drop for Unhand {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut st = self.inner.lock();
        if let Some(ix) = st.routes.get_mut(&self.rdir) {
            for id in &self.ids {
                ix.handed.remove(id);
            }
        }
    }
}

/// What [`Inner::read_handed`] read, and the error that stopped it early.
type Handed = (Vec<Entry>, Option<SpoolError>);

impl Inner {
    /// Reads the live entries `ids` of route dir `rd` that `take` marked as
    /// handed out. One that cannot be read is set aside as unreadable and
    /// the rest are read; only a process-wide error stops early: that one
    /// and the rest are un-marked and the error is returned next to what was
    /// read.
    fn read_handed(&self, rd: &str, ids: Vec<EntryId>) -> Handed {
        let mut got = Vec::new();
        let mut ids = ids.into_iter();
        while let Some(id) = ids.next() {
            match self.load(&self.path(rd, LIVE, &id), rd) {
                Load::Read(r) => got.push(Entry { id, record: r }),
                Load::Gone => self.forget(rd, &id, false),
                Load::Bad(reason, len) => self.mark_bad(rd, &id, false, &reason, len),
                Load::Later(e) => {
                    // This one and the rest were not handed out
                    // after all: the next take tries them again.
                    let mut st = self.lock();
                    if let Some(ix) = st.routes.get_mut(rd) {
                        ix.handed.remove(&id);
                        for id in ids {
                            ix.handed.remove(&id);
                        }
                    }
                    return (got, Some(e));
                }
            }
        }
        (got, None)
    }
}

#[async_trait]
impl SpoolStore for DirSpool {
    async fn put(&self, record: &Record) -> Result<EntryId, SpoolError> {
        let size = record.size();
        {
            // Reserve first, so concurrent puts cannot together pass max_bytes.
            let mut st = self.inner.lock();
            if st.bytes.saturating_add(size) > self.inner.max_bytes {
                return Err(SpoolError::Full);
            }
            st.bytes += size;
        }
        let rec = record.clone();
        let written = self.blocking(move |inner| inner.write_live(&rec)).await;
        let mut st = self.inner.lock();
        match written {
            Ok(id) => {
                let ix = st.routes.entry(route_dir(&record.route)).or_default();
                ix.add_live(id.clone(), record.live_since_ms, size);
                Ok(id)
            }
            Err(e) => {
                st.bytes -= size;
                Err(e)
            }
        }
    }

    async fn take(
        &self,
        route: &str,
        max: usize,
        _min_idle: Duration,
    ) -> Result<Vec<Entry>, SpoolError> {
        let rdir = route_dir(route);
        let has_gone = {
            let st = self.inner.lock();
            st.routes.get(&rdir).is_some_and(|ix| !ix.gone.is_empty())
        };
        if has_gone {
            let rd = rdir.clone();
            self.blocking(move |inner| {
                inner.retry_gone(&rd);
                Ok(())
            })
            .await?;
        }
        let mut out = Vec::new();
        while out.len() < max {
            let ids: Vec<EntryId> = {
                let mut st = self.inner.lock();
                let Some(ix) = st.routes.get_mut(&rdir) else {
                    break;
                };
                let ids: Vec<EntryId> = ix
                    .live
                    .keys()
                    .filter(|id| !ix.handed.contains(*id))
                    .take(max - out.len())
                    .cloned()
                    .collect();
                ix.handed.extend(ids.iter().cloned());
                ids
            };
            if ids.is_empty() {
                break;
            }
            let rd = rdir.clone();
            // Should this future be dropped while the files are read, what it
            // marked goes back to "not handed out": take stays cancel-safe.
            let mut unhand = Unhand {
                inner: self.inner.clone(),
                rdir: rdir.clone(),
                ids: ids.clone(),
            };
            let read = self
                .blocking(move |inner| Ok(inner.read_handed(&rd, ids)))
                .await;
            unhand.ids.clear();
            let (got, failed) = read?;
            out.extend(got);
            if let Some(e) = failed {
                // What was read is handed out; the error is for the next call.
                if out.is_empty() {
                    return Err(e);
                }
                break;
            }
        }
        Ok(out)
    }

    async fn keep(&self, _route: &str, _ids: &[EntryId]) -> Result<(), SpoolError> {
        Ok(())
    }

    async fn remove(&self, route: &str, id: &EntryId) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Ok(());
        }
        let rdir = route_dir(route);
        let id = id.clone();
        self.blocking(move |inner| inner.remove_live(&rdir, &id))
            .await
    }

    async fn bury(&self, route: &str, id: &EntryId) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound);
        }
        let rdir = route_dir(route);
        let id = id.clone();
        self.blocking(move |inner| {
            let from = inner.path(&rdir, LIVE, &id);
            let to = inner.path(&rdir, DEAD, &id);
            let dead_dir = inner.root.join(&rdir).join(DEAD);
            match mkdir_durable(&dead_dir) {
                Ok(()) => {}
                // No route dir: the route never had an entry.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpoolError::NotFound),
                Err(e) => return Err(unavailable("bury: create dead dir", e)),
            }
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    inner.forget(&rdir, &id, false);
                    return Err(SpoolError::NotFound);
                }
                Err(e) => return Err(unavailable("bury: rename into dead", e)),
            }
            sync_dir(&dead_dir).map_err(|e| unavailable("bury: fsync dead dir", e))?;
            let live_dir = inner.root.join(&rdir).join(LIVE);
            sync_dir(&live_dir).map_err(|e| unavailable("bury: fsync live dir", e))?;
            let mut st = inner.lock();
            let ix = st.routes.entry(rdir).or_default();
            if let Some((since, size)) = ix.drop_live(&id) {
                ix.add_dead(id, since, size);
            }
            Ok(())
        })
        .await
    }

    async fn dead(&self, route: &str) -> Result<Vec<Entry>, SpoolError> {
        let rdir = route_dir(route);
        let ids: Vec<EntryId> = {
            let st = self.inner.lock();
            st.routes
                .get(&rdir)
                .map(|ix| ix.dead.keys().cloned().collect())
                .unwrap_or_default()
        };
        self.blocking(move |inner| {
            let mut out = Vec::new();
            for id in ids {
                match inner.load(&inner.path(&rdir, DEAD, &id), &rdir) {
                    Load::Read(record) => out.push(Entry { id, record }),
                    Load::Gone => inner.forget(&rdir, &id, true),
                    Load::Bad(reason, len) => inner.mark_bad(&rdir, &id, true, &reason, len),
                    Load::Later(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn revive(&self, route: &str, id: &EntryId, now_ms: u64) -> Result<EntryId, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound);
        }
        let rdir = route_dir(route);
        let id = id.clone();
        self.blocking(move |inner| {
            let path = inner.path(&rdir, DEAD, &id);
            let mut record = match inner.load(&path, &rdir) {
                Load::Read(r) => r,
                Load::Gone => {
                    inner.forget(&rdir, &id, true);
                    return Err(SpoolError::NotFound);
                }
                Load::Bad(reason, len) => {
                    inner.mark_bad(&rdir, &id, true, &reason, len);
                    return Err(SpoolError::Unavailable(
                        "revive: dead entry cannot be read".into(),
                    ));
                }
                Load::Later(e) => return Err(e),
            };
            record.live_since_ms = now_ms;
            // The new live entry first, then the dead one goes: a crash in
            // between leaves the entry twice (live and dead), never nowhere.
            let new_id = inner.write_live(&record)?;
            let size = record.size();
            {
                // Same record, same size: the spool's total does not change.
                let mut st = inner.lock();
                let ix = st.routes.entry(rdir.clone()).or_default();
                let had = ix.drop_dead(&id).is_some();
                ix.add_live(new_id.clone(), now_ms, size);
                if !had {
                    st.bytes += size;
                }
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("revive: delete dead entry", e)),
            }
            let dead_dir = inner.root.join(&rdir).join(DEAD);
            sync_dir(&dead_dir).map_err(|e| unavailable("revive: fsync dead dir", e))?;
            Ok(new_id)
        })
        .await
    }

    async fn delete_dead(&self, route: &str, id: &EntryId) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound);
        }
        let rdir = route_dir(route);
        let id = id.clone();
        self.blocking(move |inner| {
            let path = inner.path(&rdir, DEAD, &id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    inner.forget(&rdir, &id, true);
                    return Err(SpoolError::NotFound);
                }
                Err(e) => return Err(unavailable("delete_dead: delete entry", e)),
            }
            let dead_dir = inner.root.join(&rdir).join(DEAD);
            sync_dir(&dead_dir).map_err(|e| unavailable("delete_dead: fsync dead dir", e))?;
            inner.forget(&rdir, &id, true);
            Ok(())
        })
        .await
    }

    async fn stats(&self, route: &str) -> Result<RouteStats, SpoolError> {
        let st = self.inner.lock();
        Ok(st
            .routes
            .get(&route_dir(route))
            .map(|ix| RouteStats {
                depth: ix.live.len() as u64,
                oldest_live_ms: ix.since.keys().next().copied(),
                dead: ix.dead.len() as u64,
                bytes: ix.bytes,
                unreadable: ix.bad.len() as u64,
            })
            .unwrap_or_default())
    }

    async fn close(&self) {}
}
