//! Redelivery from the delivery spool: one worker per process takes the
//! spool's entries and sends each to its route's app until the app answers
//! 2xx, holding the entry's replay id *in flight* the whole time.
//!
//! # One entry's life in the worker
//!
//! ```text
//!   taken --adopt the replay mark--> held --send--> 2xx: commit, remove  (delivered)
//!     |          |  delivered already: remove unsent  (duplicate)          \--> otherwise: wait the backoff, send again (failed)
//!     |          \  another delivery holds it: wait   (deferred)
//!     \--live for longer than max_age: bury, release the mark  (dead)
//! ```
//!
//! * **Under a lease only.** The request that spooled the entry detached its
//!   lease ([`crate::replay::Lease::detach`]); the worker adopts the mark by
//!   the entry's token ([`crate::replay::adopt`]) and renews it for as long
//!   as it holds the entry, also while it waits out a backoff. So Persona's
//!   late attempts and a manual retry from its dashboard get 409 or
//!   `duplicate` meanwhile, and a second replica that took the entry over
//!   (Redis) cannot send it while this one holds the mark.
//! * **Delivered, then removed.** The mark is committed on the app's 2xx and
//!   only then is the entry removed: a crash between the two leaves an entry
//!   whose adoption finds it delivered (Redis store) and drops it unsent. A
//!   crash between the app's 2xx and the commit sends the entry once more
//!   after the restart: the at-least-once window `docs/spool.md` describes.
//! * **Backoff** doubles from 1 s to `[spool] max_backoff`, each wait drawn
//!   between half and all of it (jitter, so a backlog does not hit a
//!   recovering app in lockstep). A 2xx from the app (for a redelivery, or
//!   for a live delivery on the route) makes every waiting entry of that
//!   route due at once: an app that is back gets its backlog in seconds, not
//!   after the longest backoff.
//! * **Oldest first**: entries are sent in the order they were stored, at
//!   most [`CONCURRENCY`] at a time, and at most [`HELD_MAX`] are held in
//!   memory (bodies included) at once.
//!
//! The worker runs on a thread and runtime of its own with its own upstream
//! connector, so a backlog never competes with the request path's runtimes
//! or pool. On SIGTERM it *drains* (`Worker::drain`): it takes and starts
//! nothing new, lets the sends already in the app's hands finish and settle,
//! and releases the marks of what it held unsent, which stays in the spool
//! for the next process. So a rolling deploy delivers nothing twice; only a
//! `kill -9` (or a grace period that runs out) ends it mid-send.
//!
//! # Layout
//!
//! This file: the worker and its backoff; `attempt`: one attempt at one
//! entry (bury, hold the replay mark, send).

mod attempt;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::http::v1::Connector;
use rand::Rng;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::replay::{self, Lease};
use crate::spool::{Entry, EntryId, Handle};
use crate::state::Shared;
use attempt::attempt;

/// Deliveries in flight from the spool at once (all routes together).
pub const CONCURRENCY: usize = 32;

/// How often the worker looks for entries it was not told about (another
/// replica's on Redis, or ones taken over after their consumer died).
const POLL: Duration = Duration::from_millis(250);

/// Entries taken from a route per look.
const TAKE: usize = 256;

/// Entries held in memory at once (each with its body): the rest wait in
/// the spool, oldest first, until room frees up. A held entry keeps its id in
/// flight; one not yet taken keeps the mark its request detached until that
/// expires, after which a manual retry from Persona's dashboard may deliver
/// it first, and taking it later finds it delivered (never a second copy).
pub const HELD_MAX: usize = 1024;

/// Starts the worker on a thread of its own. It runs until the process ends
/// or, after SIGTERM ([`Handle::stop`]), until it has drained.
pub fn spawn(shared: Arc<Shared>, handle: Arc<Handle>, connector: Connector) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(
                "cannot start the spool's redelivery runtime: {e}; spooled deliveries wait for a restart"
            );
            return;
        }
    };
    handle.worker_started();
    let on_thread = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || {
            runtime.block_on(
                Worker {
                    shared,
                    handle: on_thread.clone(),
                    connector: Arc::new(connector),
                    held: BTreeMap::new(),
                    busy: HashSet::new(),
                }
                .run(),
            );
            on_thread.worker_stopped();
        });
    if let Err(e) = spawned {
        handle.worker_stopped();
        tracing::error!("cannot start the spool's redelivery thread: {e}");
    }
}

/// An entry this worker holds.
struct Held {
    entry: Entry,
    /// The replay mark, once adopted; renewed while held.
    lease: Option<Lease>,
    /// Failed sends since it was taken (or since its route recovered).
    failures: u32,
    due: Instant,
}

/// (route, entry id): entry ids sort by the time they were stored.
type HeldKey = (String, EntryId);

/// What one attempt came to.
enum Step {
    Delivered,
    Duplicate,
    Failed,
    /// Not sent; try again after this long.
    Deferred(Duration),
    Dead,
}

impl Step {
    fn result(&self) -> &'static str {
        match self {
            Step::Delivered => "delivered",
            Step::Duplicate => "duplicate",
            Step::Failed => "failed",
            Step::Deferred(_) => "deferred",
            Step::Dead => "dead",
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    connector: Arc<Connector>,
    held: BTreeMap<HeldKey, Held>,
    /// Entries being sent right now (out of `held` meanwhile).
    busy: HashSet<HeldKey>,
}

impl Worker {
    async fn run(mut self) {
        let mut sending: JoinSet<(HeldKey, Held, Step)> = JoinSet::new();
        let mut next_look = Instant::now();
        let mut next_keep = Instant::now();
        loop {
            if self.handle.stopping() {
                return self.drain(sending).await;
            }
            let now = Instant::now();
            if now >= next_look {
                self.look().await;
                next_look = now + POLL;
            }
            for route in self.handle.take_recovered() {
                for ((r, _), h) in self.held.iter_mut() {
                    if *r == route {
                        h.due = now;
                        h.failures = 0;
                    }
                }
            }
            let inflight_ttl = self.shared.policy.load().config.policy.replay.inflight_ttl;
            if now >= next_keep {
                self.keep().await;
                next_keep = now + replay::renew_every(inflight_ttl);
            }
            self.start_due(&mut sending, now);
            self.handle
                .set_waiting(self.held.values().any(|h| h.failures > 0));
            let next_due = self.held.values().map(|h| h.due).min().unwrap_or(next_look);
            let wake_at = next_due.min(next_look).min(next_keep);
            tokio::select! {
                Some(done) = sending.join_next(), if !sending.is_empty() => {
                    if let Ok((key, held, step)) = done {
                        self.settle(key, held, step);
                    }
                }
                _ = self.handle.woken() => {
                    if self.handle.take_stored() {
                        next_look = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// SIGTERM: takes nothing new and starts nothing new; lets the sends in
    /// the app's hands finish and settles them (a 2xx is recorded and its
    /// entry removed, as always); then releases the replay marks of the
    /// entries it held unsent, so the next process (or another replica)
    /// adopts and delivers them once. Bounded by the process's
    /// `grace_period`: past it the process ends with the sends still open,
    /// as a crash would (the documented window).
    async fn drain(&mut self, mut sending: JoinSet<(HeldKey, Held, Step)>) {
        if !sending.is_empty() {
            tracing::info!(
                in_app = sending.len(),
                held = self.held.len(),
                "draining the spool: waiting for the redeliveries in the app's hands; taking nothing new"
            );
        }
        while let Some(done) = sending.join_next().await {
            if let Ok((key, held, step)) = done {
                self.settle(key, held, step);
            }
        }
        let held = std::mem::take(&mut self.held);
        let unsent = held.len();
        for (_, h) in held {
            if let Some(lease) = h.lease {
                lease.release().await;
            }
        }
        tracing::info!(
            unsent,
            "spool drained: entries not sent stay in the spool for the next process"
        );
    }

    /// Takes the entries of every spooling route that this worker does not
    /// hold yet.
    async fn look(&mut self) {
        let policy = self.shared.policy.load_full();
        let min_idle = policy.config.policy.replay.inflight_ttl;
        // Every route, spooling or not: a route whose `spool` a reload turned
        // off still delivers what its spool holds.
        for route in policy.routes.iter().map(|c| &c.route) {
            let room = HELD_MAX.saturating_sub(self.held.len() + self.busy.len());
            if room == 0 {
                return;
            }
            match self
                .handle
                .store
                .take(&route.path, room.min(TAKE), min_idle)
                .await
            {
                Ok(entries) => {
                    let now = Instant::now();
                    for entry in entries {
                        let key = (route.path.clone(), entry.id.clone());
                        if self.busy.contains(&key) {
                            continue;
                        }
                        self.held.entry(key).or_insert(Held {
                            entry,
                            lease: None,
                            failures: 0,
                            due: now,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(route = route.path.as_str(), error = %e, "spool: cannot take entries");
                }
            }
        }
    }

    /// Tells the spool this worker still holds its entries (Redis: so that
    /// no other replica takes them over while they wait out a backoff).
    async fn keep(&self) {
        let mut by_route: BTreeMap<&str, Vec<EntryId>> = BTreeMap::new();
        for (route, id) in self.held.keys().chain(self.busy.iter()) {
            by_route.entry(route).or_default().push(id.clone());
        }
        for (route, ids) in by_route {
            if let Err(e) = self.handle.store.keep(route, &ids).await {
                tracing::warn!(route, error = %e, "spool: cannot keep entries");
            }
        }
    }

    /// Sends due entries, oldest first, up to [`CONCURRENCY`] at a time.
    fn start_due(&mut self, sending: &mut JoinSet<(HeldKey, Held, Step)>, now: Instant) {
        let free = CONCURRENCY.saturating_sub(sending.len());
        if free == 0 {
            return;
        }
        // Oldest first across routes (by the time the entry became live):
        // the `free` oldest due entries, found in one pass over what is held
        // (at most HELD_MAX), without sorting the rest. Before, every turn
        // sorted every due entry by looking each one up again per
        // comparison, and a backlog of thousands drained at a few per second.
        let mut due: Vec<(u64, &HeldKey)> = self
            .held
            .iter()
            .filter(|(_, h)| h.due <= now)
            .map(|(k, h)| (h.entry.record.live_since_ms, k))
            .collect();
        if due.len() > free {
            due.select_nth_unstable(free - 1);
            due.truncate(free);
        }
        due.sort_unstable();
        let due: Vec<HeldKey> = due.into_iter().map(|(_, k)| k.clone()).collect();
        for key in due {
            let Some(mut held) = self.held.remove(&key) else {
                continue;
            };
            self.busy.insert(key.clone());
            let (shared, handle, connector) = (
                self.shared.clone(),
                self.handle.clone(),
                self.connector.clone(),
            );
            sending.spawn(async move {
                let step = attempt(&shared, &handle, &connector, &mut held).await;
                (key, held, step)
            });
        }
    }

    /// Records what an attempt came to and puts the entry back when it stays.
    fn settle(&mut self, key: HeldKey, mut held: Held, step: Step) {
        let route = key.0.as_str();
        self.shared
            .metrics
            .spool_redeliveries
            .with_label_values(&[route, step.result()])
            .inc();
        self.busy.remove(&key);
        let max_backoff = self.shared.policy.load().config.policy.spool.max_backoff;
        match step {
            Step::Delivered => {
                self.handle.recovered(route);
            }
            Step::Duplicate | Step::Dead => {}
            Step::Failed => {
                held.failures += 1;
                held.due = Instant::now() + backoff(held.failures, max_backoff);
                self.held.insert(key, held);
            }
            Step::Deferred(wait) => {
                held.due = Instant::now() + wait.min(max_backoff);
                self.held.insert(key, held);
            }
        }
    }
}

/// The wait after `failures` failed sends: 1 s doubling up to `max`, drawn
/// between half and all of it.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let full = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    let half = full / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=full - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_jitter() {
        let max = Duration::from_secs(60);
        for (failures, full) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            let full = Duration::from_secs(full);
            for _ in 0..200 {
                let b = backoff(failures, max);
                assert!(
                    b >= full / 2 && b <= full,
                    "{failures}: {b:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }
}
