//! The memory budget for request bodies held at once: `[server] max_buffered`
//! in all, `[server] max_buffered_per_client` for one client address.
//!
//! A delivery's body is read whole before its signature can be checked, and a
//! small passthrough body is read whole before it is forwarded; pingora's
//! streaming path holds the first 64 KiB of a body (its retry copy) and the
//! chunks on their way to the app. Without a bound, a crowd of clients each
//! holding a body one byte short of complete makes the proxy hold all of them:
//! 800 passthrough bodies of 64 KiB grew the process by ~178 MiB.
//!
//! So every byte kept is reserved **as it arrives**, before it is kept: a
//! [`Permit`] grows with the bytes actually read (never with a declared
//! length, so a client that declares a large body and sends nothing holds
//! nothing) and gives its bytes back when it shrinks or is dropped, on every
//! way a request can end. When the budget cannot hold the next chunk, the
//! request is refused (`overloaded`) and its body is no longer read.
//!
//! One client address (`source::client_address`: the TCP peer, or behind
//! `trusted_proxies` the right-most untrusted `X-Forwarded-For` entry) holds at
//! most the per-client share, so one flooding address cannot starve the rest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes reserved for bodies, against limits that a reload may change.
#[derive(Debug)]
pub struct BodyBudget {
    limit: AtomicU64,
    per_client: AtomicU64,
    held: AtomicU64,
    /// Bytes held per client address; an address holding nothing has no entry.
    clients: Mutex<HashMap<IpAddr, u64>>,
}

impl BodyBudget {
    pub fn new(limit: u64, per_client: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit: AtomicU64::new(limit),
            per_client: AtomicU64::new(per_client),
            held: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// New limits (a reload); reservations already held stay valid.
    pub fn set_limits(&self, limit: u64, per_client: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        self.per_client.store(per_client, Ordering::Relaxed);
    }

    /// Bytes reserved right now, all clients together.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Bytes reserved right now by `client`.
    pub fn held_by(&self, client: IpAddr) -> u64 {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(&client.to_canonical()).copied().unwrap_or(0)
    }

    /// An empty reservation for `client`, to grow as bytes arrive.
    pub fn permit(self: &Arc<Self>, client: IpAddr) -> Permit {
        Permit {
            budget: self.clone(),
            client: client.to_canonical(),
            bytes: 0,
        }
    }

    /// Adds `bytes` for `client` when both limits hold them.
    fn take(&self, client: IpAddr, bytes: u64) -> bool {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mine = clients.get(&client).copied().unwrap_or(0);
        let per_client = self.per_client.load(Ordering::Relaxed);
        if mine.checked_add(bytes).is_none_or(|t| t > per_client) {
            return false;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let fits = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok();
        if fits {
            clients.insert(client, mine + bytes);
        }
        fits
    }

    /// Gives back `bytes` that `client` held.
    fn give(&self, client: IpAddr, bytes: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = clients.get_mut(&client) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                clients.remove(&client);
            }
        }
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes one request holds in a [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<BodyBudget>,
    client: IpAddr,
    bytes: u64,
}

impl Permit {
    /// Bytes held by this permit.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes the reservation `total` bytes: more is reserved when both
    /// limits hold it (`false`, and nothing changes, when they do not); less
    /// gives the difference back.
    pub fn resize(&mut self, total: u64) -> bool {
        if total > self.bytes {
            if !self.budget.take(self.client, total - self.bytes) {
                return false;
            }
        } else if total < self.bytes {
            self.budget.give(self.client, self.bytes - total);
        }
        self.bytes = total;
        true
    }

    /// Another empty reservation for the same client.
    pub fn sibling(&self) -> Permit {
        self.budget.permit(self.client)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(self.client, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests;
