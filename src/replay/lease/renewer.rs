//! The renewal of held leases' in-flight marks, by one task per worker
//! thread instead of one per lease.
//!
//! Nearly every delivery settles its lease within milliseconds, long before
//! its first renewal is due (`inflight_ttl / 3`). A task and a timer per
//! lease (spawned, polled, aborted, polled again to be dropped) were most of
//! what holding a lease cost; here holding one is an entry in a map, and the
//! one task of the thread that took the lease sleeps until the earliest due
//! renewal. A due renewal runs in a task of its own (a Redis round trip must
//! not hold up the others), and the next is due `renew_every` after it was.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{OnError, renew_every, report};
use crate::replay::{ReplayStore, StoreKey};

/// One held lease's mark.
struct Held {
    call: Renewal,
    /// A renewal of it is under way (its task resets `call.due` when done).
    busy: bool,
}

#[derive(Default)]
struct Inner {
    held: HashMap<u64, Held>,
    /// When the renewer's task wakes next (`None`: when told).
    wake_at: Option<Instant>,
}

/// The leases one worker thread took, and whether the task renewing them is
/// still running (a runtime shut down drops it).
#[derive(Default)]
pub(super) struct Renewer {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    wake: Notify,
    running: AtomicBool,
}

impl Renewer {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each change under the lock is one map operation or one field: a
        // panic elsewhere cannot leave it half-made.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

thread_local! {
    /// This thread's renewer (its task runs on the runtime that made it).
    static CURRENT: RefCell<Option<Arc<Renewer>>> = const { RefCell::new(None) };
}

/// A lease's place in its renewer: the mark is renewed until it is dropped.
pub(super) struct Registration {
    renewer: Arc<Renewer>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.renewer.lock().held.remove(&self.id);
    }
}

/// Renews `key`'s mark held by `token` every [`renew_every`] from now on,
/// until the registration is dropped or the mark is no longer `token`'s.
/// `None` outside a tokio runtime (nothing could run the renewals).
pub(super) fn register(
    store: &Arc<dyn ReplayStore>,
    key: &StoreKey,
    token: u64,
    inflight_ttl: Duration,
    on_error: &Arc<OnceLock<OnError>>,
) -> Option<Registration> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let renewer = CURRENT.with(|current| {
        let mut current = current.borrow_mut();
        match &*current {
            Some(r) if r.running.load(Ordering::Acquire) => r.clone(),
            _ => {
                let r = Arc::new(Renewer::default());
                r.running.store(true, Ordering::Release);
                runtime.spawn(run(r.clone()));
                *current = Some(r.clone());
                r
            }
        }
    });
    let id = renewer.next_id.fetch_add(1, Ordering::Relaxed);
    let due = Instant::now() + renew_every(inflight_ttl);
    let earlier = {
        let mut inner = renewer.lock();
        let call = Renewal {
            store: store.clone(),
            key: key.clone(),
            token,
            inflight_ttl,
            on_error: on_error.clone(),
            due,
        };
        inner.held.insert(id, Held { call, busy: false });
        inner.wake_at.is_none_or(|w| due < w)
    };
    if earlier {
        renewer.wake.notify_one();
    }
    Some(Registration { renewer, id })
}

/// Marks the renewer stopped when its task is dropped (its runtime shut
/// down), so the thread's next lease starts another.
struct Running(Arc<Renewer>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// The renewer's task: starts each due renewal, then sleeps until the next
/// is due or a lease due earlier is registered.
async fn run(renewer: Arc<Renewer>) {
    let _running = Running(renewer.clone());
    loop {
        let next = {
            let mut inner = renewer.lock();
            let now = Instant::now();
            for (id, held) in inner.held.iter_mut() {
                if !held.busy && held.call.due <= now {
                    held.busy = true;
                    tokio::spawn(renew_one(renewer.clone(), *id, held.call.clone()));
                }
            }
            let next = (inner.held.values())
                .filter(|h| !h.busy)
                .map(|h| h.call.due)
                .min();
            inner.wake_at = next;
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = renewer.wake.notified() => {}
                }
            }
            None => renewer.wake.notified().await,
        }
    }
}

/// What one renewal call needs (cloned out from under the lock to run it).
#[derive(Clone)]
struct Renewal {
    store: Arc<dyn ReplayStore>,
    key: StoreKey,
    token: u64,
    inflight_ttl: Duration,
    on_error: Arc<OnceLock<OnError>>,
    due: Instant,
}

/// Renews one mark. Still this lease's: the next renewal is due
/// `renew_every` after this one was. No longer its (settled, or expired
/// after renewals failed): the lease stops renewing. A failure is reported
/// and tried again at the next due time.
async fn renew_one(renewer: Arc<Renewer>, id: u64, r: Renewal) {
    let still_held = match r.store.renew(&r.key, r.token, r.inflight_ttl).await {
        Ok(held) => held,
        Err(e) => {
            report(&r.on_error, "renew", &e);
            true
        }
    };
    {
        let mut inner = renewer.lock();
        if !still_held {
            inner.held.remove(&id);
        } else if let Some(h) = inner.held.get_mut(&id) {
            let every = renew_every(r.inflight_ttl);
            let now = Instant::now();
            h.call.due = Some(r.due + every)
                .filter(|d| *d > now)
                .unwrap_or(now + every);
            h.busy = false;
        }
    }
    renewer.wake.notify_one();
}
