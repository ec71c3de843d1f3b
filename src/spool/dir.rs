//! The embedded spool (see [`crate::spool`]): one file per entry in a local
//! directory.
//!
//! # Layout
//!
//! ```text
//!   <dir>/tmp/<id>.tmp                   being written (never an entry)
//!   <dir>/<route dir>/live/<id>.entry    a live entry
//!   <dir>/<route dir>/dead/<id>.entry    a dead letter
//!   <dir>/<route dir>/done/<id>          a tombstone: that live entry is delivered
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
//! spool at start, bounded by `max_bytes`. An unreadable file counts
//! against `max_bytes` with its file size (it still takes the disk) but not
//! in its route's `bytes`, since its record cannot be read; a delivered entry
//! whose file could not be removed counts in neither. A
//! crash between the two steps of [`SpoolStore::revive`] leaves the entry
//! both live and dead; both count until the dead one is deleted.
//!
//! An index per route (id → `live_since_ms`, size), built at open and kept by
//! every call, answers [`SpoolStore::stats`] without touching the disk.
//!
//! # Unreadable files
//!
//! One bad entry stops nothing. Anything in `live/` or `dead/` that is not a
//! readable entry of its route is *unreadable*: a file that cannot be opened
//! or read (an I/O error, EIO, EACCES), does not decode (damaged or
//! truncated, a failed checksum, another key, a newer format), holds a
//! record of another route than its directory's, or is not a regular file
//! (a directory named like an entry), or whose name is not an entry's.
//! Such a file is never deleted and never handed out: it is logged by name
//! once per process (never its content), counted, and skipped; neither
//! [`DirSpool::open`] nor any other entry waits on it. A `live/` or `dead/`
//! that cannot be listed counts as one. An error that is about the process
//! rather than the file (out of file descriptors or memory) sets nothing
//! aside: the entry is tried again at the next `take`.
//!
//! Unreadable files are counted per route directory ([`RouteStats`]'s
//! `unreadable`): the route whose path hashes to the directory they sit in,
//! which is where a damaged or wrong-key entry of that route is, whatever its
//! record says (the route cannot be read from it). Files in the directory of
//! a route that is no longer configured are logged and kept, and counted in
//! no route shown. An unreadable file is read again only by the next process
//! (a fixed key, a replaced disk): it is not retried while this one runs.
//!
//! # Delivered means gone
//!
//! An entry whose delivery was recorded is never handed out again. Its file
//! is removed and `live/` flushed; when that fails (a read-only or failing
//! disk) a tombstone `done/<id>` is written (fsynced, `done/` fsynced), and
//! [`DirSpool::open`] removes every live entry with a tombstone unsent (or,
//! if it still cannot, keeps it out of the index). When the tombstone
//! cannot be written either (every write refused), only this process's
//! memory keeps the entry as delivered: it is never handed out again while
//! the process lives, every `take` of its route retries the removal (and
//! the tombstone), and an error log says so. A restart before either
//! succeeds delivers it again: that is the one window, and the log names it.
//!
//! The same holds for an entry whose write failed after its rename (the
//! flush of `live/` failed): the request gets no 202, so the file is
//! removed before the error is returned, or, failing that, marked gone as
//! above. What the client was not told is spooled is never delivered from
//! the spool, short of a power cut while `live/` could not be flushed.
//!
//! # Blocking
//!
//! Every call that touches the disk runs in `spawn_blocking`, so an fsync on
//! a slow disk never holds a runtime worker. [`DirSpool::open`] is
//! synchronous: it runs once, at start, before the proxy takes traffic.
//!
//! # Source layout
//!
//! * this file: [`DirSpool`], opening a spool directory;
//! * `files`: the on-disk side: paths, ids, reading and writing entry files;
//! * `index`: the in-memory index per route;
//! * `gone`: *delivered means gone*: tombstones, and what only memory holds;
//! * `lock`: one process per directory ([`DirLock`]);
//! * `store`: the [`SpoolStore`] calls.

mod files;
mod gone;
mod index;
mod lock;
mod store;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::SpoolError;
#[cfg(doc)]
use super::{Record, RouteStats, SpoolStore};
use crate::config::SpoolKey;

pub use files::route_dir;
use files::{prepare_root, unavailable};
use index::State;
pub use lock::DirLock;

const TMP: &str = "tmp";
const LIVE: &str = "live";
const DEAD: &str = "dead";
const DONE: &str = "done";
const EXT: &str = ".entry";

/// The embedded spool. Cheap to share behind an `Arc`; one per directory and
/// process: two processes on one directory would hand out the same entries,
/// so the process takes the directory's [`DirLock`] before it opens it.
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
    /// Unreadable files already logged, so each is logged once per process.
    logged: Mutex<HashSet<PathBuf>>,
    state: Mutex<State>,
}

impl DirSpool {
    /// Opens (creating, mode 0700) the spool in `dir` and indexes what a
    /// previous process left. A `dir` readable by group or others is
    /// tightened to 0700, with a warning: entries hold webhook bodies.
    /// Leftover temp files (never acknowledged) are deleted.
    pub fn open(dir: &Path, max_bytes: u64, key: Option<SpoolKey>) -> Result<DirSpool, SpoolError> {
        prepare_root(dir)?;
        let inner = Inner {
            root: dir.to_owned(),
            key,
            max_bytes,
            suffix: rand::random(),
            last_nanos: Mutex::new(0),
            logged: Mutex::new(HashSet::new()),
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
            if !fs::metadata(ent.path()).is_ok_and(|m| m.is_dir()) {
                // Named like a route's directory and not one: unreadable.
                inner.note_bad(&ent.path(), "not a directory");
                let mut index = index::RouteIndex::default();
                index.bad.insert((false, name.clone()), 0);
                state.routes.insert(name, index);
                continue;
            }
            let index = inner.index_route(&ent.path(), &name, &mut state.bytes)?;
            state.routes.insert(name, index);
        }
        *inner.lock() = state;
        Ok(DirSpool {
            inner: Arc::new(inner),
        })
    }

    /// Unreadable files (see the module documentation), every route: kept
    /// on disk, skipped, logged by name.
    pub fn unreadable(&self) -> u64 {
        let st = self.inner.lock();
        st.routes.values().map(|ix| ix.bad.len() as u64).sum()
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
