//! The metrics of reconciliation with Persona's Events API (the contract's §9).

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

pub struct ReconcileMetrics {
    /// `persona_guard_reconcile_runs_total{route, result}`: `ok`,
    /// `rate_limited`, `api_error`, `store_error`.
    pub runs: IntCounterVec,
    /// `persona_guard_reconcile_missing_events_total{route}`: each missing
    /// event once, on the first run that finds it.
    pub missing_total: IntCounterVec,
    /// `persona_guard_reconcile_missing_events{route}`: the last run's count.
    pub missing: IntGaugeVec,
    /// `persona_guard_reconcile_backfilled_total{route, result}`.
    pub backfilled: IntCounterVec,
    /// `persona_guard_reconcile_last_success_timestamp_seconds{route}`.
    pub last_success: IntGaugeVec,
}

/// The `result` labels of a run.
pub const RUN_RESULTS: [&str; 4] = ["ok", "rate_limited", "api_error", "store_error"];

/// The `result` labels of a backfilled event.
pub const BACKFILL_RESULTS: [&str; 6] = [
    "delivered",
    "spooled",
    "failed",
    "duplicate",
    "in_flight",
    "store_error",
];

impl ReconcileMetrics {
    pub fn new(r: &Registry) -> Self {
        ReconcileMetrics {
            runs: super::counter_vec(
                r,
                "persona_guard_reconcile_runs_total",
                "Reconciliation runs against Persona's Events API, by result (ok, rate_limited, api_error, store_error).",
                &["route", "result"],
            ),
            missing_total: super::counter_vec(
                r,
                "persona_guard_reconcile_missing_events_total",
                "Events Persona has that never reached the app, each counted once (on the first run that finds it).",
                &["route"],
            ),
            missing: super::gauge_vec(
                r,
                "persona_guard_reconcile_missing_events",
                "Missing events found by the route's last reconciliation run.",
                &["route"],
            ),
            backfilled: super::counter_vec(
                r,
                "persona_guard_reconcile_backfilled_total",
                "Missing events delivered by backfill, by result (delivered, spooled, failed, duplicate, in_flight, store_error).",
                &["route", "result"],
            ),
            last_success: super::gauge_vec(
                r,
                "persona_guard_reconcile_last_success_timestamp_seconds",
                "Unix time of the route's last reconciliation run that read the whole window.",
                &["route"],
            ),
        }
    }

    /// Pre-creates a route's series at 0.
    pub fn register_route(&self, route: &str) {
        for result in RUN_RESULTS {
            self.runs.with_label_values(&[route, result]);
        }
        for result in BACKFILL_RESULTS {
            self.backfilled.with_label_values(&[route, result]);
        }
        self.missing_total.with_label_values(&[route]);
        self.missing.with_label_values(&[route]);
        self.last_success.with_label_values(&[route]);
    }
}
