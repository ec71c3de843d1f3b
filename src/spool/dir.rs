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
//!
//! # Source layout
//!
//! * this file: [`DirSpool`], opening a spool directory;
//! * `files`: the on-disk side: paths, ids, reading and writing entry files;
//! * `index`: the in-memory index per route;
//! * `lock`: one process per directory ([`DirLock`]);
//! * `store`: the [`SpoolStore`] calls.

mod files;
mod index;
mod lock;
mod store;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    unreadable: AtomicU64,
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
            let index = inner.index_route(&ent.path(), &name, &mut state.bytes)?;
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
