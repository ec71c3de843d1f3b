//! The client connection metrics: open connections and refused ones.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

/// Why a new client connection was closed at once: `[server]
/// max_connections` or `max_connections_per_peer` was reached.
pub const CONNECTION_REFUSALS: [&str; 2] = ["max_connections", "max_connections_per_peer"];

pub struct ConnectionMetrics {
    /// `persona_guard_client_connections`: client connections open now (the
    /// public listener; refused ones are not counted).
    pub open: IntGauge,
    /// `persona_guard_connections_refused_total{reason}` ([`CONNECTION_REFUSALS`]).
    pub refused: IntCounterVec,
    /// The two `refused` series, in [`CONNECTION_REFUSALS`]' order.
    pub refused_by: [IntCounter; 2],
}

impl ConnectionMetrics {
    pub fn new(r: &Registry) -> Self {
        let open = super::gauge(
            r,
            "persona_guard_client_connections",
            "Client connections open on the public listener right now.",
        );
        let refused = super::counter_vec(
            r,
            "persona_guard_connections_refused_total",
            "New client connections closed at once, before a request was read, by the limit reached.",
            &["reason"],
        );
        let refused_by = CONNECTION_REFUSALS.map(|reason| refused.with_label_values(&[reason]));
        ConnectionMetrics {
            open,
            refused,
            refused_by,
        }
    }
}
