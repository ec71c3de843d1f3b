//! `[server] max_connections` and `max_connections_per_peer`: the public
//! listener's open client connections, counted from accept to close.
//!
//! [`ClientConnection`](super::connection::ClientConnection) asks
//! [`Connections::admit`] first thing for every accepted connection, before
//! TLS and before a byte of a request is read; past either limit the
//! connection is dropped (closed) at once and counted in
//! `persona_guard_connections_refused_total{reason}`. An admitted connection
//! holds a [`Slot`] until its task ends, whatever the path (TLS, HTTP/1,
//! HTTP/2, an error, a panic): the slot's `Drop` gives the place back.
//!
//! The peer is the TCP peer's IP address (a proxy in front is one peer);
//! peers in `[server] trusted_proxies` count only toward the total. The limits
//! are read per connection, so a SIGHUP reload applies to new connections
//! (open ones are never closed for it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::ConnectionMetrics;
use prometheus::{IntCounter, IntGauge};

/// The limits one admission is judged by (from the running configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_peer: usize,
}

/// Why a connection was refused, as the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerPeer,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        crate::metrics::CONNECTION_REFUSALS[self as usize]
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Open connections by peer, exempt peers not included; an entry goes
    /// when its count is back to 0.
    by_peer: HashMap<IpAddr, usize>,
}

/// The public listener's open connections.
pub struct Connections {
    counts: Mutex<Counts>,
    open: IntGauge,
    refused: [IntCounter; 2],
}

impl Connections {
    pub fn new(metrics: &ConnectionMetrics) -> Arc<Connections> {
        Arc::new(Connections {
            counts: Mutex::default(),
            open: metrics.open.clone(),
            refused: metrics.refused_by.clone(),
        })
    }

    /// A place for a new connection from `peer` (`None`: not an IP peer, or
    /// exempt: counted toward the total only), or why there is none (counted).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>, limits: Limits) -> Result<Slot, Refused> {
        let peer = peer.map(|ip| ip.to_canonical());
        let judged = {
            let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            if c.total >= limits.total {
                Err(Refused::Total)
            } else if peer
                .is_some_and(|ip| c.by_peer.get(&ip).copied().unwrap_or(0) >= limits.per_peer)
            {
                Err(Refused::PerPeer)
            } else {
                c.total += 1;
                if let Some(ip) = peer {
                    *c.by_peer.entry(ip).or_insert(0) += 1;
                }
                Ok(())
            }
        };
        match judged {
            Ok(()) => {
                self.open.inc();
                Ok(Slot {
                    owner: self.clone(),
                    peer,
                })
            }
            Err(why) => {
                self.refused[why as usize].inc();
                Err(why)
            }
        }
    }

    fn release(&self, peer: Option<IpAddr>) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = peer
            && let Some(n) = c.by_peer.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.by_peer.remove(&ip);
            }
        }
        drop(c);
        self.open.dec();
    }
}

/// One admitted connection's place; dropped when the connection's task ends.
pub struct Slot {
    owner: Arc<Connections>,
    peer: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.release(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn each_limit_refuses_past_it_and_a_dropped_slot_frees_its_place() {
        let m = ConnectionMetrics::new(&prometheus::Registry::new());
        let conns = Connections::new(&m);
        let limits = Limits {
            total: 3,
            per_peer: 2,
        };
        let a1 = conns.admit(ip("192.0.2.1"), limits).unwrap();
        let _a2 = conns.admit(ip("192.0.2.1"), limits).unwrap();
        // The same peer written as an IPv4-mapped address is the same peer.
        let mapped = conns.admit(ip("::ffff:192.0.2.1"), limits);
        assert_eq!(mapped.err(), Some(Refused::PerPeer));
        let b = conns.admit(ip("192.0.2.2"), limits).unwrap();
        // An exempt peer (None) still counts toward the total.
        assert_eq!(conns.admit(None, limits).err(), Some(Refused::Total));
        assert_eq!(m.open.get(), 3);
        assert_eq!(m.refused_by[0].get(), 1);
        assert_eq!(m.refused_by[1].get(), 1);
        drop(a1);
        drop(b);
        assert_eq!(m.open.get(), 1);
        let _c = conns.admit(ip("192.0.2.1"), limits).unwrap();
        let _d = conns.admit(None, limits).unwrap();
        assert_eq!(m.open.get(), 3);
        assert_eq!(conns.counts.lock().unwrap().by_peer.len(), 1);
        assert_eq!(Refused::PerPeer.reason(), "max_connections_per_peer");
    }
}
