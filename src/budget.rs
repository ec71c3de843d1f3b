//! The memory budget for webhook bodies held at once (`[server] max_buffered`).
//!
//! A delivery's body is read whole before its signature can be checked, so
//! without a bound a crowd of forged but well-formed deliveries (each up to
//! `max_body`) makes the proxy hold all of them at once: 100 concurrent 1 MiB
//! bodies grew the process by ~119 MiB, past a sidecar's memory limit, and one
//! HTTP/2 connection carries up to 100 such streams.
//!
//! So a request reserves its body's size **before any byte of it is read**:
//! the declared `Content-Length`, or the route's `max_body` when the body is
//! chunked (its size is unknown until the end). When the reservation would
//! pass the budget, the request is answered 503 `overloaded` with
//! `Retry-After` and its body is never read. The reservation is a [`Permit`]
//! that gives its bytes back when dropped, on every way a request can end.
//!
//! The budget is process-wide rather than per source: behind a load balancer
//! or an ingress every request comes from the same peer address, and a share
//! per address would throttle the whole service instead of one client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes reserved for bodies, against a limit that a reload may change.
#[derive(Debug)]
pub struct BodyBudget {
    limit: AtomicU64,
    held: AtomicU64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit: AtomicU64::new(limit),
            held: AtomicU64::new(0),
        })
    }

    /// A new limit (a reload); reservations already held stay valid.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes reserved right now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, or `None` when the budget cannot hold them.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Permit> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .ok()?;
        Some(Permit {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes reserved in a [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reservations_fit_the_limit_and_come_back_on_drop() {
        let b = BodyBudget::new(10);
        let a = b.reserve(6).expect("fits");
        assert!(b.reserve(5).is_none(), "6 + 5 > 10");
        let c = b.reserve(4).expect("exactly the limit");
        assert_eq!(b.held(), 10);
        drop(a);
        assert_eq!(b.held(), 4);
        assert!(b.reserve(6).is_some());
        drop(c);
        assert_eq!(b.held(), 0);
        assert!(b.reserve(11).is_none());
        assert!(b.reserve(u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn a_lower_limit_refuses_new_reservations_only() {
        let b = BodyBudget::new(10);
        let kept = b.reserve(8).unwrap();
        b.set_limit(4);
        assert!(b.reserve(1).is_none());
        drop(kept);
        assert!(b.reserve(4).is_some());
    }

    proptest! {
        /// Whatever the interleaving of reservations and drops, what is held
        /// never passes the limit and equals the sum of the live permits.
        #[test]
        fn prop_held_is_the_sum_of_live_permits(ops in prop::collection::vec((any::<bool>(), 0u64..40), 0..64)) {
            let b = BodyBudget::new(100);
            let mut live: Vec<Permit> = Vec::new();
            for (take, n) in ops {
                if take {
                    if let Some(p) = b.reserve(n) {
                        live.push(p);
                    }
                } else if !live.is_empty() {
                    live.remove(n as usize % live.len());
                }
                let sum: u64 = live.iter().map(|p| p.bytes).sum();
                prop_assert_eq!(b.held(), sum);
                prop_assert!(sum <= 100);
            }
        }
    }
}
