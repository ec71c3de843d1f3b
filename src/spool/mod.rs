//! The delivery spool: verified deliveries the application could not take
//! (or, with `spool = "always"`, every verified first-time delivery), kept
//! durably and redelivered by persona-guard itself until the app answers 2xx.
//!
//! # The rules every piece keeps
//!
//! * **Durable before 202.** [`SpoolStore::put`] returns only once the entry
//!   survives a crash (embedded: file written, fsynced, renamed, directory
//!   fsynced; Redis: `XADD` acknowledged). Only then does the client get
//!   `202 {"status":"spooled"}`. A full or unwritable spool is an error and the
//!   request is answered as if there were no spool (the app's status, 502, 504).
//! * **Once.** A spooled entry's replay id stays *in flight* in the replay
//!   store: the request's lease is detached when the entry is stored (its mark
//!   lives on for `inflight_ttl`) and the instance redelivering the entry adopts
//!   it by its token ([`crate::replay::adopt`]) and renews it for as long as it
//!   holds the entry. An entry is delivered only under a lease; after the app's
//!   2xx the lease is committed (delivered) and only then the entry removed. An
//!   adoption that finds the id *delivered* removes the entry without sending it.
//! * **Never silently deleted.** An entry older than `max_age` (counted from
//!   [`Record::live_since_ms`]) becomes a dead letter: kept, listed, counted and
//!   logged, redelivered only by an operator (`POST /spool/retry`), deleted only
//!   by an operator (`DELETE /spool/dead`).
//! * **One bad entry stops nothing.** An entry that cannot be read (an I/O
//!   error, damaged, a failed checksum, another key, not an entry at all) is
//!   skipped, kept, logged once by name and counted
//!   ([`RouteStats::unreadable`]); no other entry and no start waits on it.
//! * **Delivered means gone.** A removed entry is never handed out again,
//!   even when its file cannot be removed (see [`dir`]: a tombstone, or this
//!   process's memory when nothing can be written).
//!
//! # Layout
//!
//! * this file: [`Record`] (what is kept) and [`SpoolStore`] (where); the
//!   route setting is [`crate::config::SpoolMode`];
//! * [`codec`]: a record to bytes and back, sealed with AES-256-GCM when
//!   `[spool] key` is set;
//! * [`dir`]: the embedded spool, one file per entry in a local directory;
//! * [`redis`]: the shared spool, a Redis stream per route and a consumer group.

pub mod codec;
pub mod dir;
pub mod redis;

#[cfg(test)]
mod model_tests;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::RedisSettings;

/// One spooled delivery: the request exactly as it was (or would have been)
/// first forwarded, and what redelivery needs to hold its replay id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The route's path as configured (its metrics label, the admin listing).
    pub route: String,
    /// The id held in the replay store for this delivery: the event id, the
    /// id at `id_pointer`, or a signed request's digest. Never logged when it
    /// is a digest (`event_id` is `None` then).
    pub replay_id: String,
    /// The event id, for logs, the admin listing and `?id=`.
    pub event_id: Option<String>,
    /// The event type, for logs and the admin listing.
    pub event_type: Option<String>,
    /// The replay claim's token when the entry was stored: the first instance
    /// to redeliver adopts the mark with it.
    pub token: u64,
    /// When the delivery was first spooled (Unix milliseconds).
    pub spooled_at_ms: u64,
    /// Since when the entry is live: `spooled_at_ms`, or the time an
    /// operator retried it as a dead letter. `max_age` counts from here.
    pub live_since_ms: u64,
    /// The HTTP/1.1 request head as first forwarded: request line, headers
    /// (trusted headers included, `Content-Length` last), the blank line.
    pub head: Vec<u8>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
}

impl Record {
    /// The bytes this entry takes in the spool, as counted against `max_bytes`
    /// (head, body and the ids; the backends' framing is not counted).
    pub fn size(&self) -> u64 {
        (self.head.len()
            + self.body.len()
            + self.route.len()
            + self.replay_id.len()
            + self.event_id.as_ref().map_or(0, |s| s.len())
            + self.event_type.as_ref().map_or(0, |s| s.len())) as u64
    }
}

/// A backend's id for one entry: opaque, unique in its route, and ordered by
/// the time the entry was stored (the embedded spool's file stem, a Redis
/// stream id).
pub type EntryId = String;

/// An entry handed to the redelivery worker or listed to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub record: Record,
}

/// One route's spool, as `GET /spool` and the gauges report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Live entries (not dead letters).
    pub depth: u64,
    /// `live_since_ms` of the oldest live entry.
    pub oldest_live_ms: Option<u64>,
    /// Dead letters.
    pub dead: u64,
    /// Bytes held (live and dead), as counted against `max_bytes`.
    pub bytes: u64,
    /// Entries kept but not readable (an I/O error, damaged, another key,
    /// not an entry): never delivered, never deleted, never in `depth`.
    /// Embedded spool: what is in the route's directory (see [`dir`]);
    /// Redis: what this replica found undecodable (see [`redis`]).
    pub unreadable: u64,
}

/// Why the spool could not do something. Messages never quote a body, a
/// header value, a key or a password.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Storing this entry would take the spool past `max_bytes`.
    #[error("the spool is full (max_bytes)")]
    Full,
    /// The storage failed (disk error, read-only directory, Redis down).
    #[error("the spool is unavailable: {0}")]
    Unavailable(String),
    /// No entry with that id (in that state).
    #[error("no such spool entry")]
    NotFound,
}

/// Where spooled deliveries are kept. Every method is for one route (its
/// configured path, `Record::route`); entries of different routes never mix.
#[async_trait]
pub trait SpoolStore: Send + Sync {
    /// Durably keeps `record` as a live entry of `record.route`. Returns once
    /// the entry would survive `kill -9` (and, for the embedded spool, a power
    /// loss): [`SpoolError::Full`] when it would take the spool past
    /// `max_bytes`, [`SpoolError::Unavailable`] when it cannot be written.
    async fn put(&self, record: &Record) -> Result<EntryId, SpoolError>;

    /// Live entries of `route` for this instance to redeliver, oldest first, at
    /// most `max`: ones never handed out before (embedded: every live entry on
    /// disk not yet handed out by this process, so the first call after a
    /// start returns what a previous process left; Redis: `XREADGROUP >`),
    /// and (Redis only) entries another consumer has held for longer than
    /// `min_idle` without [`SpoolStore::keep`] (`XAUTOCLAIM`). An entry stays
    /// handed out to this instance until it is removed, buried or this
    /// process ends.
    async fn take(
        &self,
        route: &str,
        max: usize,
        min_idle: Duration,
    ) -> Result<Vec<Entry>, SpoolError>;

    /// This instance still holds these entries (Redis: resets their idle time,
    /// so no other replica takes them over; embedded: nothing to do).
    async fn keep(&self, route: &str, ids: &[EntryId]) -> Result<(), SpoolError>;

    /// The entry was delivered (or found delivered): gone for good. Removing
    /// an entry that is already gone is not an error.
    async fn remove(&self, route: &str, id: &EntryId) -> Result<(), SpoolError>;

    /// A live entry past `max_age` becomes a dead letter: kept, listed by
    /// [`SpoolStore::dead`], never handed out by `take` again.
    async fn bury(&self, route: &str, id: &EntryId) -> Result<(), SpoolError>;

    /// The dead letters of `route`, oldest first.
    async fn dead(&self, route: &str) -> Result<Vec<Entry>, SpoolError>;

    /// A dead letter back to live (an operator's retry), with `live_since_ms`
    /// set to `now_ms` so `max_age` counts again; `take` hands it out again.
    /// Returns the live entry's id (a backend may give it a new one).
    async fn revive(&self, route: &str, id: &EntryId, now_ms: u64) -> Result<EntryId, SpoolError>;

    /// Deletes a dead letter (an operator's decision). [`SpoolError::NotFound`]
    /// when `id` is not a dead letter of `route`.
    async fn delete_dead(&self, route: &str, id: &EntryId) -> Result<(), SpoolError>;

    /// Depth, oldest age, dead letters and bytes of `route`.
    async fn stats(&self, route: &str) -> Result<RouteStats, SpoolError>;

    /// Stops background work (connections); entries stay where they are.
    async fn close(&self);

    /// Follows a reload's changed Redis settings where this store can (see
    /// [`redis::RedisSpool::follow`]); `Ok(false)`: it cannot, or it has no
    /// Redis client, and keeps what it started with.
    fn follow_redis(&self, _new: &RedisSettings) -> Result<bool, SpoolError> {
        Ok(false)
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    crate::clock::unix_now().as_millis() as u64
}

/// The process's spool: where entries are kept, and how the request path
/// tells the redelivery worker that there is work (an entry stored, a route's
/// app answering 2xx again).
pub struct Handle {
    pub store: std::sync::Arc<dyn SpoolStore>,
    wake: tokio::sync::Notify,
    recovered: std::sync::Mutex<Vec<String>>,
    /// An entry was stored since the worker last looked.
    stored: std::sync::atomic::AtomicBool,
    /// The worker holds entries waiting out a backoff: only then is a live
    /// 2xx news to it (so a healthy route's deliveries cost one atomic read).
    waiting: std::sync::atomic::AtomicBool,
    /// Set on SIGTERM: the worker takes nothing new, lets the sends in the
    /// app's hands finish and settle, and releases what it held unsent.
    stopping: std::sync::atomic::AtomicBool,
    /// True once the worker has drained, or when no worker runs.
    drained: tokio::sync::watch::Sender<bool>,
    /// The embedded spool's directory lock, held for the process's life.
    _lock: Option<dir::DirLock>,
}

impl Handle {
    pub fn new(store: std::sync::Arc<dyn SpoolStore>) -> Self {
        Handle {
            store,
            wake: tokio::sync::Notify::new(),
            recovered: std::sync::Mutex::new(Vec::new()),
            stored: std::sync::atomic::AtomicBool::new(false),
            waiting: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
            drained: tokio::sync::watch::Sender::new(true),
            _lock: None,
        }
    }

    /// The same, holding the embedded spool's directory `lock` for as long
    /// as the handle lives (the process's life).
    pub fn with_lock(store: std::sync::Arc<dyn SpoolStore>, lock: dir::DirLock) -> Self {
        Handle {
            _lock: Some(lock),
            ..Handle::new(store)
        }
    }

    /// A worker runs: [`Handle::drained`] waits for it from now on.
    pub fn worker_started(&self) {
        self.drained.send_replace(false);
    }

    /// The worker has drained (or stopped): [`Handle::drained`] returns.
    pub fn worker_stopped(&self) {
        self.drained.send_replace(true);
    }

    /// SIGTERM: the worker drains (see [`Handle::stopping`]).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether [`Handle::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once the worker has drained, or at once when none runs.
    pub async fn drained(&self) {
        let mut rx = self.drained.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = rx.wait_for(|drained| *drained).await;
    }

    /// Whether the worker has drained, or none runs.
    pub fn is_drained(&self) -> bool {
        *self.drained.borrow()
    }

    /// An entry was stored: the worker takes it now rather than at its next poll.
    pub fn stored(&self) {
        self.stored
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether an entry was stored since the last call (the worker's).
    pub fn take_stored(&self) -> bool {
        self.stored.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Set by the worker: whether it holds entries waiting out a backoff.
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting
            .store(waiting, std::sync::atomic::Ordering::Release);
    }

    /// `route`'s app answered 2xx: the worker retries that route's waiting
    /// entries now instead of after their backoff. Nothing to do (one atomic
    /// read) when no entry waits.
    pub fn recovered(&self, route: &str) {
        if !self.waiting.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut r = self.recovered.lock().unwrap_or_else(|e| e.into_inner());
        if !r.iter().any(|x| x == route) {
            r.push(route.to_string());
        }
        drop(r);
        self.wake.notify_one();
    }

    /// The routes reported recovered since the last call.
    pub fn take_recovered(&self) -> Vec<String> {
        std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when [`Handle::stored`] or [`Handle::recovered`] is called
    /// (or was, since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}
