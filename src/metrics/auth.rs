//! The metrics of Persona's optional authentication: the JWKS fetches of
//! OAuth routes and the age of the key set in use.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

pub struct AuthMetrics {
    /// `persona_guard_jwks_refreshes_total{route, result}`: every fetch of a
    /// route's key set, `ok` or `error`.
    pub jwks_refreshes: IntCounterVec,
    /// `persona_guard_jwks_age_seconds{route}`: the age of the key set in use
    /// (set on scrape); it grows while refreshes fail.
    pub jwks_age: IntGaugeVec,
}

impl AuthMetrics {
    pub fn new(r: &Registry) -> Self {
        AuthMetrics {
            jwks_refreshes: super::counter_vec(
                r,
                "persona_guard_jwks_refreshes_total",
                "Fetches of an OAuth route's JWKS, by result (ok, error); a failed one keeps the last good set.",
                &["route", "result"],
            ),
            jwks_age: super::gauge_vec(
                r,
                "persona_guard_jwks_age_seconds",
                "Age of the JWKS an OAuth route verifies tokens with.",
                &["route"],
            ),
        }
    }

    /// Pre-creates a route's series at 0.
    pub fn register_route(&self, route: &str) {
        for result in ["ok", "error"] {
            self.jwks_refreshes.with_label_values(&[route, result]);
        }
    }
}
