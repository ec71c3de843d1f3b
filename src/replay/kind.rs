//! The replay store's kinds (`replay.store`), in one place: the store each
//! one builds, what a reload may do with a running one, and which delivery
//! spool goes beside it (said as data: the spool module is above this one).
//! A new backend is added here and in the config's [`StoreKind`].

use std::sync::Arc;

use super::ReplayStore;
use super::memory::{MemoryStore, SystemClock};
use super::redis::RedisStore;
use crate::config::{ProcessConfig, RedisSettings, StoreKind};

/// The store `replay.store` names, the memory one of `replay.capacity`.
pub fn build(p: &ProcessConfig) -> Result<Arc<dyn ReplayStore>, String> {
    Ok(match &p.store {
        StoreKind::Memory => Arc::new(MemoryStore::new(
            p.capacity,
            Arc::new(SystemClock::default()),
        )),
        StoreKind::Redis(r) => redis(r).map_err(|e| format!("replay store: {e}"))?,
    })
}

/// A new Redis client for `settings`.
fn redis(settings: &RedisSettings) -> Result<Arc<dyn ReplayStore>, String> {
    let store = RedisStore::new(settings).map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

/// What a reload does with the running store.
pub enum OnReload<'a> {
    /// The same settings: the running store stays.
    Keep,
    /// Another backend: only a restart changes it; the running one stays.
    Restart,
    /// New Redis settings: a new client from `new`, when [`OnReload::apply`]
    /// can build one; the spool beside it is told too.
    Rebuild {
        old: &'a RedisSettings,
        new: &'a RedisSettings,
    },
}

impl<'a> OnReload<'a> {
    pub fn of(running: &'a StoreKind, new: &'a StoreKind) -> OnReload<'a> {
        match (running, new) {
            (StoreKind::Redis(old), StoreKind::Redis(new)) if old != new => {
                OnReload::Rebuild { old, new }
            }
            (StoreKind::Memory, StoreKind::Memory) | (StoreKind::Redis(_), StoreKind::Redis(_)) => {
                OnReload::Keep
            }
            _ => OnReload::Restart,
        }
    }

    /// The store to swap in, if any.
    pub fn apply(&self) -> Result<Option<Arc<dyn ReplayStore>>, String> {
        match self {
            OnReload::Rebuild { new, .. } => redis(new).map(Some),
            OnReload::Keep | OnReload::Restart => Ok(None),
        }
    }
}

/// The delivery spool that goes with a store: one every replica sharing the
/// store shares too.
pub enum Spool<'a> {
    /// The embedded directory spool (`spool.dir`), beside one process's memory.
    Dir,
    /// Redis streams on the store's own server.
    Redis(&'a RedisSettings),
}

pub fn spool(store: &StoreKind) -> Spool<'_> {
    match store {
        StoreKind::Memory => Spool::Dir,
        StoreKind::Redis(r) => Spool::Redis(r),
    }
}
