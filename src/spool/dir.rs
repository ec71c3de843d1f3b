//! The embedded spool (see [`crate::spool`]): one file per entry in a local
//! directory.
//!
//! # Layout
//!
//! ```text
//!   <dir>/tmp/<id>.tmp                   being written (never an entry)
//!   <dir>/<route dir>/live/<id>.entry    a live entry
//!   <dir>/<route dir>/dead/<id>.entry    a dead letter
//! ```
//!
//! `<route dir>` is the hex of the first 16 bytes of SHA-256 of the route's
//! path: a fixed-length name whatever the path holds (slashes, dots), and two
//! routes never share one. The record inside carries its route anyway; an
//! entry found under the wrong route dir is treated as unreadable.
//!
//! # Why files and fsync
//!
//! An entry is written to `tmp/`, fsynced, renamed into `live/` and the
//! directory fsynced before [`SpoolStore::put`] returns: a rename within one
//! filesystem is atomic, so after a crash an entry is either whole in `live/`
//! or absent (and then the client never got its 202). A leftover in `tmp/` was
//! never acknowledged and is deleted at [`DirSpool::open`]. Files rather than
//! an embedded database (redb, sled): the spool is written once per entry and
//! read once, with no queries; files need no new storage engine in the
//! process, survive a crash by the filesystem's own rules, and an operator can
//! inspect, back up or move entries with `ls` and `mv`.
//!
//! # Ids
//!
//! `<20-digit Unix nanoseconds>-<8 hex digits>`: the time sorts ids by age
//! (strictly increasing within the process even when the clock steps back),
//! the hex is random per process so two processes never make the same id.
//! Ids that come back from outside (an operator's `?id=`) are checked against
//! this shape before they become a path, so they cannot name another file.
//!
//! # Size accounting
//!
//! `max_bytes` counts [`Record::size`] of every entry held (live and dead), as
//! the trait says, not the files' sizes. [`DirSpool::open`] decodes every
//! entry once to learn it (and `live_since_ms`), which costs one read of the
//! spool at start, bounded by `max_bytes`. A file that cannot be decoded
//! counts against `max_bytes` with its file size (it still takes the disk)
//! but in no route's [`RouteStats`], since its route cannot be read. A
//! crash between the two steps of [`SpoolStore::revive`] leaves the entry
//! both live and dead; both count until the dead one is deleted.
//!
//! An index per route (id → `live_since_ms`, size), built at open and kept by
//! every call, answers [`SpoolStore::stats`] without touching the disk.
//!
//! # Unreadable files
//!
//! A file that does not decode (corrupt, another key, a newer format) is
//! never deleted: it is logged by name (never its content), counted
//! ([`DirSpool::unreadable`]) and skipped, and not handed out again.
//!
//! # Blocking
//!
//! Every call that touches the disk runs in `spawn_blocking`, so an fsync on
//! a slow disk never holds a runtime worker. [`DirSpool::open`] is
//! synchronous: it runs once, at start, before the proxy takes traffic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::codec;
use super::{Entry, EntryId, Record, RouteStats, SpoolError, SpoolStore};
use crate::config::SpoolKey;

const TMP: &str = "tmp";
const LIVE: &str = "live";
const DEAD: &str = "dead";
const EXT: &str = ".entry";

/// The embedded spool. Cheap to share behind an `Arc`; one per directory and
/// process (two processes on one directory would hand out the same entries).
#[derive(Debug)]
pub struct DirSpool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    key: Option<SpoolKey>,
    max_bytes: u64,
    /// Random per process: the id suffix and the temp file names.
    suffix: u32,
    /// The last id's nanoseconds, so ids strictly increase.
    last_nanos: Mutex<u128>,
    unreadable: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// By route dir name.
    routes: HashMap<String, RouteIndex>,
    /// Indexed entries' sizes, unreadable files' lengths, and puts under way.
    bytes: u64,
}

#[derive(Debug, Default)]
struct RouteIndex {
    /// id → (live_since_ms, size).
    live: BTreeMap<EntryId, (u64, u64)>,
    dead: BTreeMap<EntryId, (u64, u64)>,
    /// How many live entries have each `live_since_ms`: the oldest is the
    /// first key, so `stats` needs no walk over the entries.
    since: BTreeMap<u64, usize>,
    /// Live ids handed out by `take` (and not yet removed or buried).
    handed: HashSet<EntryId>,
    bytes: u64,
}

impl RouteIndex {
    fn add_live(&mut self, id: EntryId, since: u64, size: u64) {
        self.live.insert(id, (since, size));
        *self.since.entry(since).or_default() += 1;
        self.bytes += size;
    }

    /// Drops a live entry from the index; its size, when it was there.
    fn drop_live(&mut self, id: &str) -> Option<(u64, u64)> {
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

    fn add_dead(&mut self, id: EntryId, since: u64, size: u64) {
        self.dead.insert(id, (since, size));
        self.bytes += size;
    }

    fn drop_dead(&mut self, id: &str) -> Option<(u64, u64)> {
        let v = self.dead.remove(id)?;
        self.bytes -= v.1;
        Some(v)
    }

    fn drop(&mut self, id: &str, dead: bool) -> Option<(u64, u64)> {
        if dead {
            self.drop_dead(id)
        } else {
            self.drop_live(id)
        }
    }
}

fn unavailable(op: &str, e: io::Error) -> SpoolError {
    // The kind only: an io::Error's text is the OS's and carries no record
    // bytes, but a kind is all an operator needs next to the operation.
    SpoolError::Unavailable(format!("{op}: {}", e.kind()))
}

/// The directory name of `route`.
pub fn route_dir(route: &str) -> String {
    hex::encode(&Sha256::digest(route.as_bytes())[..16])
}

/// Whether `id` has the shape this spool gives ids (and so names no other file).
fn valid_id(id: &str) -> bool {
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
fn mkdir_durable(path: &Path) -> io::Result<()> {
    if mkdir_new(path)?
        && let Some(parent) = path.parent()
    {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(path: &Path) -> io::Result<()> {
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

impl DirSpool {
    /// Opens (creating, mode 0700) the spool in `dir` and indexes what a
    /// previous process left. A `dir` readable by group or others is
    /// tightened to 0700, with a warning: entries hold webhook bodies.
    /// Leftover temp files (never acknowledged) are deleted.
    pub fn open(dir: &Path, max_bytes: u64, key: Option<SpoolKey>) -> Result<DirSpool, SpoolError> {
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

        let inner = Inner {
            root: dir.to_owned(),
            key,
            max_bytes,
            suffix: rand::random(),
            last_nanos: Mutex::new(0),
            unreadable: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        };
        let mut state = State::default();
        for ent in fs::read_dir(dir).map_err(|e| unavailable("open: list spool dir", e))? {
            let ent = ent.map_err(|e| unavailable("open: list spool dir", e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Only names `route_dir` makes; anything else is not ours to read.
            if name.len() != 32 || !name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                continue;
            }
            let mut index = RouteIndex::default();
            for (sub, dead) in [(LIVE, false), (DEAD, true)] {
                let files = list(&ent.path().join(sub))
                    .map_err(|e| unavailable("open: list entries", e))?;
                for (id, path) in files {
                    let bytes = fs::read(&path).map_err(|e| unavailable("open: read entry", e))?;
                    match inner.decode(&bytes, &path, &name) {
                        Some(r) => {
                            let size = r.size();
                            if dead {
                                index.add_dead(id, r.live_since_ms, size);
                            } else {
                                index.add_live(id, r.live_since_ms, size);
                            }
                            state.bytes += size;
                        }
                        None => state.bytes += bytes.len() as u64,
                    }
                }
            }
            state.routes.insert(name, index);
        }
        *inner.lock() = state;
        Ok(DirSpool {
            inner: Arc::new(inner),
        })
    }

    /// Files found undecodable since `open` (corrupt, another key, another
    /// format): kept on disk, skipped, logged by name.
    pub fn unreadable(&self) -> u64 {
        self.inner.unreadable.load(Ordering::Relaxed)
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, SpoolError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|_| SpoolError::Unavailable("spool task failed".into()))?
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the index as it was between two
        // consistent steps at worst; serving on beats failing every call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, rdir: &str, sub: &str, id: &str) -> PathBuf {
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
    fn decode(&self, bytes: &[u8], path: &Path, rdir: &str) -> Option<Record> {
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
    fn write_live(&self, record: &Record) -> Result<EntryId, SpoolError> {
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
    fn read(&self, rdir: &str, sub: &str, id: &str) -> Result<Option<Record>, SpoolError> {
        let path = self.path(rdir, sub, id);
        match fs::read(&path) {
            Ok(bytes) => Ok(self.decode(&bytes, &path, rdir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read entry", e)),
        }
    }

    /// Takes an entry that turned out unreadable out of the index: its
    /// size moves from the route to the file's length (it still takes disk).
    fn mark_bad(&self, rdir: &str, sub: &str, id: &str, dead: bool) {
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
    fn forget(&self, rdir: &str, id: &str, dead: bool) {
        let mut st = self.lock();
        let Some(ix) = st.routes.get_mut(rdir) else {
            return;
        };
        if let Some((_, size)) = ix.drop(id, dead) {
            st.bytes -= size;
        }
    }
}

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
                .blocking(move |inner| {
                    let mut got = Vec::new();
                    let mut ids = ids.into_iter();
                    while let Some(id) = ids.next() {
                        match inner.read(&rd, LIVE, &id) {
                            Ok(Some(r)) => got.push(Entry { id, record: r }),
                            // Unreadable (logged, kept, never handed out
                            // again) or gone behind our back.
                            Ok(None) if inner.path(&rd, LIVE, &id).exists() => {
                                inner.mark_bad(&rd, LIVE, &id, false)
                            }
                            Ok(None) => inner.forget(&rd, &id, false),
                            Err(e) => {
                                // This one and the rest were not handed out
                                // after all: the next take tries them again.
                                let mut st = inner.lock();
                                if let Some(ix) = st.routes.get_mut(&rd) {
                                    ix.handed.remove(&id);
                                    for id in ids {
                                        ix.handed.remove(&id);
                                    }
                                }
                                return Ok((got, Some(e)));
                            }
                        }
                    }
                    Ok((got, None))
                })
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
        self.blocking(move |inner| {
            let path = inner.path(&rdir, LIVE, &id);
            match fs::remove_file(&path) {
                Ok(()) => {
                    let parent = path.parent().unwrap_or(&inner.root);
                    sync_dir(parent).map_err(|e| unavailable("remove: fsync live dir", e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("remove: delete entry", e)),
            }
            inner.forget(&rdir, &id, false);
            Ok(())
        })
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
                match inner.read(&rdir, DEAD, &id)? {
                    Some(record) => out.push(Entry { id, record }),
                    None if inner.path(&rdir, DEAD, &id).exists() => {
                        inner.mark_bad(&rdir, DEAD, &id, true)
                    }
                    None => inner.forget(&rdir, &id, true),
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
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    inner.forget(&rdir, &id, true);
                    return Err(SpoolError::NotFound);
                }
                Err(e) => return Err(unavailable("revive: read dead entry", e)),
            };
            let Some(mut record) = inner.decode(&bytes, &path, &rdir) else {
                inner.mark_bad(&rdir, DEAD, &id, true);
                return Err(SpoolError::Unavailable(
                    "revive: dead entry cannot be read".into(),
                ));
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
            })
            .unwrap_or_default())
    }

    async fn close(&self) {}
}
