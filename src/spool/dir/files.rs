//! The embedded spool's files (see [`super`]): paths, ids, and reading and
//! writing entries durably.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

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

/// `(id, path)` of each entry file in `dir`, oldest first; none when absent.
fn list(dir: &Path) -> io::Result<Vec<(EntryId, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(EXT)) else {
            continue;
        };
        if valid_id(id) {
            out.push((id.to_owned(), ent.path()));
        }
    }
    out.sort();
    Ok(out)
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
        fs::remove_file(ent.path()).map_err(|e| unavailable("open: clear tmp dir", e))?;
    }
    Ok(())
}

impl Inner {
    pub(super) fn path(&self, rdir: &str, sub: &str, id: &str) -> PathBuf {
        self.root.join(rdir).join(sub).join(format!("{id}{EXT}"))
    }

    fn new_id(&self) -> EntryId {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut last = self.last_nanos.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last + 1);
        format!("{:020}-{:08x}", *last, self.suffix)
    }

    /// The record in `bytes` read from `path` in route dir `rdir`, or `None`
    /// (logged and counted) when it is not one of this spool's records.
    pub(super) fn decode(&self, bytes: &[u8], path: &Path, rdir: &str) -> Option<Record> {
        let why = match codec::decode(bytes, self.key.as_ref()) {
            Ok(r) if route_dir(&r.route) == rdir => return Some(r),
            Ok(_) => "its route does not match its directory".to_owned(),
            Err(e) => e.to_string(),
        };
        self.unreadable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            file = %path.display(),
            reason = %why,
            "spool entry cannot be read; skipped and kept on disk"
        );
        None
    }

    /// Writes `record` as a new live entry: temp file (0600), fsync, rename,
    /// fsync of `live/`. Does not touch the index.
    pub(super) fn write_live(&self, record: &Record) -> Result<EntryId, SpoolError> {
        let rdir = route_dir(&record.route);
        let live = self.root.join(&rdir).join(LIVE);
        mkdir_durable(&self.root.join(&rdir))
            .map_err(|e| unavailable("put: create route dir", e))?;
        mkdir_durable(&live).map_err(|e| unavailable("put: create live dir", e))?;
        let id = self.new_id();
        let tmp = self.root.join(TMP).join(format!("{id}.tmp"));
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
            fs::rename(&tmp, live.join(format!("{id}{EXT}")))
                .map_err(|e| unavailable("put: rename into live", e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&live).map_err(|e| unavailable("put: fsync live dir", e))?;
        Ok(id)
    }

    /// Reads and decodes one entry; `Ok(None)` when it is unreadable or gone.
    pub(super) fn read(
        &self,
        rdir: &str,
        sub: &str,
        id: &str,
    ) -> Result<Option<Record>, SpoolError> {
        let path = self.path(rdir, sub, id);
        match fs::read(&path) {
            Ok(bytes) => Ok(self.decode(&bytes, &path, rdir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read entry", e)),
        }
    }

    /// Indexes the live and dead entries of the route dir `route_path` (named
    /// `name`), adding every file's size to `total`.
    pub(super) fn index_route(
        &self,
        route_path: &Path,
        name: &str,
        total: &mut u64,
    ) -> Result<RouteIndex, SpoolError> {
        let mut index = RouteIndex::default();
        for (sub, dead) in [(LIVE, false), (DEAD, true)] {
            let files =
                list(&route_path.join(sub)).map_err(|e| unavailable("open: list entries", e))?;
            for (id, path) in files {
                let bytes = fs::read(&path).map_err(|e| unavailable("open: read entry", e))?;
                match self.decode(&bytes, &path, name) {
                    Some(r) => {
                        let size = r.size();
                        if dead {
                            index.add_dead(id, r.live_since_ms, size);
                        } else {
                            index.add_live(id, r.live_since_ms, size);
                        }
                        *total += size;
                    }
                    None => *total += bytes.len() as u64,
                }
            }
        }
        Ok(index)
    }
}
