//! The embedded spool's files (see [`super`]): paths, ids, and reading and
//! writing entries durably.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::index::RouteIndex;
use super::{DEAD, EXT, Inner, LIVE, TMP};
use crate::spool::codec;
use crate::spool::{EntryId, Record, SpoolError};

pub(super) fn unavailable(op: &str, e: io::Error) -> SpoolError {
    // The kind only: an io::Error's text is the OS's and carries no record
    // bytes, but a kind is all an operator needs next to the operation.
    SpoolError::Unavailable(format!("{op}: {}", e.kind()))
}

/// The directory name of `route`.
pub fn route_dir(route: &str) -> String {
    hex::encode(&Sha256::digest(route.as_bytes())[..16])
}

/// Whether `id` has the shape this spool gives ids (and so names no other file).
pub(super) fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 29
        && b[..20].iter().all(u8::is_ascii_digit)
        && b[20] == b'-'
        && b[21..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Creates `path` (0700); whether it was created (not already there).
fn mkdir_new(path: &Path) -> io::Result<bool> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `path` (0700) and, when it is new, fsyncs its parent: an entry
/// renamed into a directory whose own name is not yet durable would be lost
/// with it on a power cut.
pub(super) fn mkdir_durable(path: &Path) -> io::Result<()> {
    if mkdir_new(path)?
        && let Some(parent) = path.parent()
    {
        sync_dir(parent)?;
    }
    Ok(())
}

pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The names in `dir` with the entry id each names (`None`: not an entry
/// file's name), sorted; none when `dir` is absent.
fn scan(dir: &Path) -> io::Result<Vec<(String, Option<EntryId>)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let name = ent?.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_suffix(EXT)
            .filter(|id| valid_id(id))
            .map(str::to_owned);
        out.push((name, id));
    }
    out.sort();
    Ok(out)
}

/// Errors that say nothing about one entry but about the process (out of
/// file descriptors or memory: EMFILE, ENFILE, ENOMEM): the entry is tried
/// again later rather than set aside as unreadable.
fn process_wide(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::OutOfMemory || matches!(e.raw_os_error(), Some(12 | 23 | 24))
}

/// What reading one entry file came to.
pub(super) enum Load {
    Read(Record),
    /// Not there (any more).
    Gone,
    /// Not an entry this spool can hand out: why (an error kind or the
    /// codec's reason, never bytes of the file) and the file's length.
    Bad(String, u64),
    /// A process-wide error: try again later.
    Later(SpoolError),
}

/// Removes `path` (already gone is fine) and flushes its directory: the
/// removal survives a power cut only once both are done.
pub(super) fn unlink_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match path.parent().map(sync_dir) {
        // No directory, nothing in it to flush.
        Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Prepares the spool directory `dir` for [`super::DirSpool::open`]: creates
/// it (0700) or tightens a loose one, and clears leftover temp files.
pub(super) fn prepare_root(dir: &Path) -> Result<(), SpoolError> {
    match fs::metadata(dir) {
        Ok(md) => {
            let mode = md.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "spool directory is open to group or others; tightening it to 0700"
                );
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| unavailable("open: chmod spool dir", e))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)
                .map_err(|e| unavailable("open: create spool dir", e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| unavailable("open: fsync parent dir", e))?;
            }
        }
        Err(e) => return Err(unavailable("open: stat spool dir", e)),
    }
    let tmp = dir.join(TMP);
    mkdir_new(&tmp).map_err(|e| unavailable("open: create tmp dir", e))?;
    for ent in fs::read_dir(&tmp).map_err(|e| unavailable("open: list tmp dir", e))? {
        let ent = ent.map_err(|e| unavailable("open: list tmp dir", e))?;
        // Never acknowledged, so never an entry: one that cannot be deleted
        // (a directory, a failing disk) is left there and does not stop the start.
        if let Err(e) = fs::remove_file(ent.path()) {
            tracing::warn!(
                file = %ent.path().display(),
                error = %e.kind(),
                "spool: cannot delete a leftover temp file; left in place"
            );
        }
    }
    Ok(())
}

impl Inner {
    pub(super) fn path(&self, rdir: &str, sub: &str, id: &str) -> PathBuf {
        self.root.join(rdir).join(sub).join(format!("{id}{EXT}"))
    }

    fn new_id(&self) -> EntryId {
        let now = crate::clock::unix_now().as_nanos();
        let mut last = self.last_nanos.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last + 1);
        format!("{:020}-{:08x}", *last, self.suffix)
    }

    /// Reads and decodes the entry file `path` of route dir `rdir`.
    pub(super) fn load(&self, path: &Path, rdir: &str) -> Load {
        let len = |md: &fs::Metadata| md.len();
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_file() => {}
            // A directory, a FIFO (whose open would block), a symlink: never
            // something this spool wrote.
            Ok(md) => return Load::Bad("not a regular file".into(), len(&md)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Load::Gone,
            Err(e) if process_wide(&e) => return Load::Later(unavailable("read entry", e)),
            Err(e) => return Load::Bad(format!("cannot be read: {}", e.kind()), 0),
        }
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Load::Gone,
            Err(e) if process_wide(&e) => return Load::Later(unavailable("read entry", e)),
            Err(e) => {
                let n = fs::symlink_metadata(path).map_or(0, |m| m.len());
                return Load::Bad(format!("cannot be read: {}", e.kind()), n);
            }
        };
        let n = bytes.len() as u64;
        match codec::decode(&bytes, self.key.as_ref()) {
            Ok(r) if route_dir(&r.route) == rdir => Load::Read(r),
            Ok(_) => Load::Bad("its route does not match its directory".into(), n),
            Err(e) => Load::Bad(e.to_string(), n),
        }
    }

    /// Logs an unreadable file by name, once per process.
    pub(super) fn note_bad(&self, path: &Path, reason: &str) {
        let first = self
            .logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned());
        if first {
            tracing::warn!(
                file = %path.display(),
                reason,
                "spool entry cannot be read; skipped and kept on disk (counted in GET /spool as unreadable)"
            );
        }
    }

    /// Writes `record` as a new live entry: temp file (0600), fsync, rename,
    /// fsync of `live/`. Does not touch the index, except when the entry's
    /// file can be neither flushed nor removed (see `unwrite`).
    pub(super) fn write_live(&self, record: &Record) -> Result<EntryId, SpoolError> {
        let rdir = route_dir(&record.route);
        let live = self.root.join(&rdir).join(LIVE);
        mkdir_durable(&self.root.join(&rdir))
            .map_err(|e| unavailable("put: create route dir", e))?;
        mkdir_durable(&live).map_err(|e| unavailable("put: create live dir", e))?;
        let id = self.new_id();
        let tmp = self.root.join(TMP).join(format!("{id}.tmp"));
        let entry = live.join(format!("{id}{EXT}"));
        let bytes = codec::encode(record, self.key.as_ref());
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| unavailable("put: create temp file", e))?;
            f.write_all(&bytes)
                .map_err(|e| unavailable("put: write temp file", e))?;
            f.sync_all()
                .map_err(|e| unavailable("put: fsync temp file", e))?;
            fs::rename(&tmp, &entry).map_err(|e| unavailable("put: rename into live", e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = sync_dir(&live) {
            // Not durable, so no 202: the renamed file must not be delivered
            // later (after a restart) behind the answer the client got.
            self.unwrite(&rdir, &id, &entry);
            return Err(unavailable("put: fsync live dir", e));
        }
        Ok(id)
    }

    /// Indexes the live and dead entries of the route dir `route_path` (named
    /// `rdir`), adding every file's size to `total`. Whatever cannot be read
    /// is set aside as unreadable (logged, kept); only a process-wide error
    /// stops it. Entries with a tombstone are removed (or set aside as gone).
    pub(super) fn index_route(
        &self,
        route_path: &Path,
        rdir: &str,
        total: &mut u64,
    ) -> Result<RouteIndex, SpoolError> {
        let mut index = RouteIndex::default();
        for (sub, dead) in [(LIVE, false), (DEAD, true)] {
            let dir = route_path.join(sub);
            let names = match scan(&dir) {
                Ok(names) => names,
                Err(e) if process_wide(&e) => return Err(unavailable("open: list entries", e)),
                Err(e) => {
                    // The directory itself (not a directory, or failing): one
                    // unreadable thing; its entries wait for a start that can list it.
                    self.note_bad(&dir, &format!("cannot be listed: {}", e.kind()));
                    index.bad.insert((dead, sub.to_owned()), 0);
                    continue;
                }
            };
            for (name, id) in names {
                let path = dir.join(&name);
                let Some(id) = id else {
                    let len = fs::symlink_metadata(&path).map_or(0, |m| m.len());
                    self.note_bad(&path, "not an entry file's name");
                    index.bad.insert((dead, name), len);
                    *total += len;
                    continue;
                };
                match self.load(&path, rdir) {
                    Load::Read(r) => {
                        let size = r.size();
                        if dead {
                            index.add_dead(id, r.live_since_ms, size);
                        } else {
                            index.add_live(id, r.live_since_ms, size);
                        }
                        *total += size;
                    }
                    Load::Gone => {}
                    Load::Bad(reason, len) => {
                        self.note_bad(&path, &reason);
                        index.bad.insert((dead, name), len);
                        *total += len;
                    }
                    Load::Later(e) => return Err(e),
                }
            }
        }
        self.honour_tombstones(route_path, &mut index, total);
        Ok(index)
    }
}
