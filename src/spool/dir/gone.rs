//! *Delivered means gone* for the embedded spool (see [`super`]): an entry
//! that must never be handed out again (delivered, or written but answered
//! without 202) and whose file cannot be removed is recorded by a durable
//! tombstone in `done/`, or, when nothing can be written, in this process's
//! memory; removal is retried, and `open` honours the tombstones.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::files::{mkdir_durable, sync_dir, unavailable, unlink_durable, valid_id};
use super::index::RouteIndex;
use super::{DONE, EXT, Inner, LIVE};
use crate::spool::{EntryId, SpoolError};

impl Inner {
    /// Takes back the entry `id` whose write failed after its rename: removes
    /// its file or, failing that, marks it gone (a tombstone, or memory),
    /// so it is never handed out.
    pub(super) fn unwrite(&self, rdir: &str, id: &str, entry: &Path) {
        match unlink_durable(entry) {
            Ok(()) => tracing::warn!(
                file = %entry.display(),
                "spool: an entry's directory could not be flushed; its file is removed and the delivery answered without 202"
            ),
            Err(e) => {
                let _ = self.keep_gone(rdir, id, &e, "an entry answered without 202");
            }
        }
    }

    /// The tombstone of entry `id` of route dir `rdir`.
    fn tombstone(&self, rdir: &str, id: &str) -> PathBuf {
        self.root.join(rdir).join(DONE).join(id)
    }

    /// Writes the tombstone of `id` durably: file fsynced, `done/` fsynced.
    fn write_tombstone(&self, rdir: &str, id: &str) -> io::Result<()> {
        let done = self.root.join(rdir).join(DONE);
        mkdir_durable(&done)?;
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(done.join(id))?;
        f.sync_all()?;
        sync_dir(&done)
    }

    /// The live entry `id` must never be handed out again (delivered, or its
    /// write was answered without 202) but its file could not be removed
    /// (`e`): it leaves the index and a tombstone records it; when even that
    /// cannot be written, only this process's memory does (see
    /// [`super`], *Delivered means gone*). Removal is retried by `take`.
    pub(super) fn keep_gone(
        &self,
        rdir: &str,
        id: &str,
        e: &io::Error,
        what: &str,
    ) -> Result<(), SpoolError> {
        let file = self.path(rdir, LIVE, id);
        let tombstone = self.write_tombstone(rdir, id);
        {
            let mut st = self.lock();
            let st = &mut *st;
            let ix = st.routes.entry(rdir.to_owned()).or_default();
            if let Some((_, size)) = ix.drop_live(id) {
                st.bytes -= size;
            }
            ix.gone.insert(id.to_owned(), tombstone.is_ok());
        }
        match tombstone {
            Ok(()) => {
                tracing::warn!(
                    file = %file.display(),
                    error = %e.kind(),
                    "spool: {what}, but its file could not be removed; a tombstone in done/ records it, so it is never sent again (its removal is retried)"
                );
                Ok(())
            }
            Err(t) => {
                tracing::error!(
                    file = %file.display(),
                    error = %e.kind(),
                    tombstone_error = %t.kind(),
                    "spool: {what}, but neither could its file be removed nor a tombstone be written; only this process remembers it and never sends it again (removal is retried); a restart before the spool's disk is writable again would deliver it again"
                );
                Err(unavailable(
                    "remove: delete entry",
                    io::Error::from(e.kind()),
                ))
            }
        }
    }

    /// Removes the live entry `id` for good (delivered, or found delivered),
    /// and its tombstone if it had one; see `keep_gone` when that fails.
    pub(super) fn remove_live(&self, rdir: &str, id: &str) -> Result<(), SpoolError> {
        match unlink_durable(&self.path(rdir, LIVE, id)) {
            Ok(()) => {
                let tombstoned = {
                    let mut st = self.lock();
                    let st = &mut *st;
                    let ix = st.routes.get_mut(rdir);
                    let gone = ix.as_ref().and_then(|ix| ix.gone.get(id).copied());
                    if let Some(ix) = ix {
                        ix.gone.remove(id);
                        if let Some((_, size)) = ix.drop_live(id) {
                            st.bytes -= size;
                        }
                    }
                    gone
                };
                if tombstoned == Some(true) {
                    // Stale now; one left behind is removed at the next open.
                    let _ = unlink_durable(&self.tombstone(rdir, id));
                }
                Ok(())
            }
            Err(e) => self.keep_gone(rdir, id, &e, "an entry was delivered"),
        }
    }

    /// Retries removing the entries of `rdir` that are gone but still on
    /// disk (`keep_gone`); writes the tombstone of one only memory held.
    pub(super) fn retry_gone(&self, rdir: &str) {
        let gone: Vec<(EntryId, bool)> = {
            let st = self.lock();
            st.routes
                .get(rdir)
                .map(|ix| ix.gone.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default()
        };
        for (id, tombstoned) in gone {
            let file = self.path(rdir, LIVE, &id);
            if unlink_durable(&file).is_ok() {
                if tombstoned {
                    let _ = unlink_durable(&self.tombstone(rdir, &id));
                }
                if let Some(ix) = self.lock().routes.get_mut(rdir) {
                    ix.gone.remove(&id);
                }
                tracing::info!(file = %file.display(), "spool: a delivered entry's file is removed now");
            } else if !tombstoned && self.write_tombstone(rdir, &id).is_ok() {
                if let Some(ix) = self.lock().routes.get_mut(rdir) {
                    ix.gone.insert(id.clone(), true);
                }
                tracing::warn!(
                    file = %file.display(),
                    "spool: a delivered entry's tombstone is written now; a restart no longer sends it"
                );
            }
        }
    }

    /// At open: every live entry with a tombstone in `done/` was delivered
    /// (or never acknowledged). It is removed unsent, or, when that fails,
    /// kept out of the index as gone (never handed out; `take` retries).
    pub(super) fn honour_tombstones(
        &self,
        route_path: &Path,
        index: &mut RouteIndex,
        total: &mut u64,
    ) {
        let done = route_path.join(DONE);
        let names = match scan_plain(&done) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(
                    dir = %done.display(),
                    error = %e.kind(),
                    "spool: cannot list the tombstones of delivered entries; an entry delivered before may be delivered again"
                );
                return;
            }
        };
        for id in names.into_iter().filter(|n| valid_id(n)) {
            let file = route_path.join(LIVE).join(format!("{id}{EXT}"));
            if let Some((_, size)) = index.drop_live(&id) {
                *total -= size;
            } else if let Some(len) = index.bad.remove(&(false, format!("{id}{EXT}"))) {
                *total -= len;
            }
            match unlink_durable(&file) {
                Ok(()) => {
                    let _ = unlink_durable(&done.join(&id));
                }
                Err(e) => {
                    tracing::warn!(
                        file = %file.display(),
                        error = %e.kind(),
                        "spool: an entry recorded as delivered (tombstone in done/) cannot be removed; it is not sent (removal is retried)"
                    );
                    index.gone.insert(id, true);
                }
            }
        }
    }
}

/// The names in `dir`, none when it is absent.
fn scan_plain(dir: &Path) -> io::Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    rd.map(|ent| ent.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}
