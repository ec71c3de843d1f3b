//! Every metric name and label persona-guard exports, in one place.
//!
//! A private `prometheus::Registry` (not the global default) so tests and
//! several instances in one process never share counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::outcome::Outcome;

mod auth;
mod connections;
mod reconcile;
pub use auth::AuthMetrics;
pub use connections::{CONNECTION_REFUSALS, ConnectionMetrics};
pub use reconcile::ReconcileMetrics;

/// The label used for requests under no route.
pub const NO_ROUTE: &str = "(none)";

pub struct Metrics {
    registry: Registry,
    /// `persona_guard_requests_total{route, outcome}`
    pub requests: IntCounterVec,
    /// `persona_guard_secret_matches_total{route, secret}`: which configured secret
    /// (by position, never the value) verified a delivery.
    pub secret_matches: IntCounterVec,
    /// `persona_guard_upstream_duration_seconds{route, class}`
    pub upstream_duration: HistogramVec,
    /// `persona_guard_verify_duration_seconds{route}`: header parse + HMAC.
    pub verify_duration: HistogramVec,
    /// `persona_guard_replay_entries`
    pub replay_entries: IntGauge,
    /// `persona_guard_buffered_body_bytes`: request body bytes reserved now
    /// against `[server] max_buffered` (settled on scrape).
    pub buffered_body_bytes: IntGauge,
    /// `persona_guard_replay_insertions_total`: ids claimed (admitted as in flight).
    pub replay_insertions: IntCounter,
    /// `persona_guard_replay_evictions_total`: ids evicted for room before their ttl.
    pub replay_evictions: IntCounter,
    /// `persona_guard_config_reloads_total{result}`
    pub reloads: IntCounterVec,
    /// `persona_guard_replay_store_errors_total{op}`: failed claim/commit/release.
    pub replay_store_errors: IntCounterVec,
    /// `persona_guard_replay_fail_open_total`: deliveries forwarded without replay
    /// protection because the store failed and `on_store_error = "allow"`.
    pub replay_fail_open: IntCounter,
    /// `persona_guard_delivery_attempts_total{route, attempt}`: verified
    /// deliveries forwarded, by `Persona-Webhook-Attempts-Made`
    /// ([`crate::attempts::LABELS`]).
    pub delivery_attempts: IntCounterVec,
    /// `persona_guard_final_attempt_failures_total{route}`: forwarded
    /// deliveries that failed while `Persona-Webhook-Attempts-Left` was 0.
    pub final_attempt_failures: IntCounterVec,
    /// `persona_guard_spool_depth{route}`: live entries in the delivery spool (set on scrape).
    pub spool_depth: IntGaugeVec,
    /// `persona_guard_spool_oldest_age_seconds{route}`: age of the oldest live entry (set on scrape).
    pub spool_oldest_age: IntGaugeVec,
    /// `persona_guard_spool_dead_letters{route}`: dead letters kept (set on scrape).
    pub spool_dead_letters: IntGaugeVec,
    /// `persona_guard_spool_unreadable_entries{route}`: spooled entries kept
    /// but not readable (an I/O error, damaged, another key), never
    /// delivered, never deleted (set on scrape).
    pub spool_unreadable: IntGaugeVec,
    /// `persona_guard_spool_redeliveries_total{route, result}` ([`SPOOL_RESULTS`]).
    pub spool_redeliveries: IntCounterVec,
    /// `persona_guard_spool_fallbacks_total{route, reason}`: deliveries that
    /// should have been spooled but were answered as without a spool
    /// ([`SPOOL_FALLBACKS`]).
    pub spool_fallbacks: IntCounterVec,
    /// `persona_guard_admin_refused_total{reason}`: state-changing admin calls
    /// refused (403), by [`ADMIN_REFUSALS`].
    pub admin_refused: IntCounterVec,
    /// Open and refused client connections ([`ConnectionMetrics`]).
    pub connections: ConnectionMetrics,
    /// JWKS fetches and age ([`AuthMetrics`]).
    pub auth: AuthMetrics,
    /// Reconciliation with Persona's Events API.
    pub reconcile: ReconcileMetrics,
}

/// The `result` of a redelivery from the spool: the app answered 2xx
/// (`delivered`); it failed or did not answer (`failed`); the id was found
/// delivered already and the entry dropped unsent (`duplicate`); another
/// delivery holds the id, tried again later (`deferred`); the entry passed
/// `max_age` (`dead`).
pub const SPOOL_RESULTS: [&str; 5] = ["delivered", "failed", "duplicate", "deferred", "dead"];

/// Why a delivery was not spooled: `full` (`max_bytes`), `unavailable`
/// (the disk or Redis failed), `no_claim` (forwarded without a replay claim).
pub const SPOOL_FALLBACKS: [&str; 3] = ["full", "unavailable", "no_claim"];

/// Why a state-changing admin call was refused: a peer other than loopback
/// sent no bearer token (`no_token`), or one that is not `[admin] token`
/// (`wrong_token`, also when no token is configured).
pub const ADMIN_REFUSALS: [&str; 2] = ["no_token", "wrong_token"];

/// `persona_guard_admin_refused_total{reason}`, every reason at 0.
fn admin_refused(r: &Registry) -> IntCounterVec {
    let refused = counter_vec(
        r,
        "persona_guard_admin_refused_total",
        "State-changing admin calls refused (403): not from loopback and without the [admin] token.",
        &["reason"],
    );
    for reason in ADMIN_REFUSALS {
        refused.with_label_values(&[reason]);
    }
    refused
}

/// Registers `metric` in `registry` and hands it back. Names are static and
/// unique, so registration cannot fail.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registered(r, m)
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        r,
        IntCounter::new(name, help).expect("static metric definition"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        r,
        IntGauge::new(name, help).expect("static metric definition"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registered(r, m)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(
        r,
        HistogramVec::new(opts, labels).expect("static metric definition"),
    )
}

/// `persona_guard_replay_store_errors_total{op}`, every operation at 0.
fn replay_store_errors(r: &Registry) -> IntCounterVec {
    let replay_store_errors = counter_vec(
        r,
        "persona_guard_replay_store_errors_total",
        "Replay store operations that failed, by operation.",
        &["op"],
    );
    for op in ["claim", "commit", "release", "renew"] {
        replay_store_errors.with_label_values(&[op]);
    }
    replay_store_errors
}

/// `persona_guard_config_reloads_total{result}`, both results at 0.
fn reloads(r: &Registry) -> IntCounterVec {
    let reloads = counter_vec(
        r,
        "persona_guard_config_reloads_total",
        "Configuration reloads by result.",
        &["result"],
    );
    // At 0 from the start, so the first refused reload is an increase.
    for result in ["ok", "error"] {
        reloads.with_label_values(&[result]);
    }
    reloads
}

/// The request metrics: `requests`, `secret_matches`, `upstream_duration`,
/// `verify_duration` (in that order).
fn request_metrics(r: &Registry) -> (IntCounterVec, IntCounterVec, HistogramVec, HistogramVec) {
    (
        counter_vec(
            r,
            "persona_guard_requests_total",
            "Requests by route and outcome.",
            &["route", "outcome"],
        ),
        counter_vec(
            r,
            "persona_guard_secret_matches_total",
            "Verified deliveries by the position of the secret that matched.",
            &["route", "secret"],
        ),
        histogram_vec(
            r,
            "persona_guard_upstream_duration_seconds",
            "Time from sending a verified delivery upstream to its response head.",
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
            &["route", "class"],
        ),
        histogram_vec(
            r,
            "persona_guard_verify_duration_seconds",
            "Time spent verifying a signature (parse and HMAC over the body).",
            &[
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
            ],
            &["route"],
        ),
    )
}

/// The replay memory's metrics: `replay_entries`, `buffered_body_bytes`,
/// `replay_insertions`, `replay_evictions`, `replay_fail_open` (in that order).
fn replay_metrics(r: &Registry) -> (IntGauge, IntGauge, IntCounter, IntCounter, IntCounter) {
    (
        gauge(
            r,
            "persona_guard_replay_entries",
            "Event ids currently remembered (in flight or delivered).",
        ),
        gauge(
            r,
            "persona_guard_buffered_body_bytes",
            "Request body bytes held right now against [server] max_buffered (webhook and passthrough).",
        ),
        counter(
            r,
            "persona_guard_replay_insertions_total",
            "Event ids admitted into the replay memory (claimed for delivery).",
        ),
        counter(
            r,
            "persona_guard_replay_evictions_total",
            "Event ids evicted for room before their ttl ran out (raise capacity if this moves).",
        ),
        counter(
            r,
            "persona_guard_replay_fail_open_total",
            "Deliveries forwarded without replay protection because the store failed.",
        ),
    )
}

/// The delivery attempt metrics: `delivery_attempts`, `final_attempt_failures`.
fn attempt_metrics(r: &Registry) -> (IntCounterVec, IntCounterVec) {
    (
        counter_vec(
            r,
            "persona_guard_delivery_attempts_total",
            "Verified deliveries forwarded, by Persona-Webhook-Attempts-Made (above 8 counted as 8).",
            &["route", "attempt"],
        ),
        counter_vec(
            r,
            "persona_guard_final_attempt_failures_total",
            "Forwarded deliveries that failed on Persona's last automatic attempt (Attempts-Left 0).",
            &["route"],
        ),
    )
}

/// The delivery spool's metrics: `spool_depth`, `spool_oldest_age`,
/// `spool_dead_letters`, `spool_redeliveries`, `spool_fallbacks` (in that order).
fn spool_metrics(
    r: &Registry,
) -> (
    IntGaugeVec,
    IntGaugeVec,
    IntGaugeVec,
    IntCounterVec,
    IntCounterVec,
) {
    (
        gauge_vec(
            r,
            "persona_guard_spool_depth",
            "Live deliveries waiting in the delivery spool.",
            &["route"],
        ),
        gauge_vec(
            r,
            "persona_guard_spool_oldest_age_seconds",
            "Age of the oldest live delivery in the spool (0 when empty).",
            &["route"],
        ),
        gauge_vec(
            r,
            "persona_guard_spool_dead_letters",
            "Spooled deliveries past [spool] max_age, kept until an operator retries or deletes them.",
            &["route"],
        ),
        counter_vec(
            r,
            "persona_guard_spool_redeliveries_total",
            "Redeliveries from the spool by result.",
            &["route", "result"],
        ),
        counter_vec(
            r,
            "persona_guard_spool_fallbacks_total",
            "Deliveries the spool could not keep, answered as without a spool, by reason.",
            &["route", "reason"],
        ),
    )
}

impl Metrics {
    /// Registers every metric, by family, in a registry of its own.
    pub fn new() -> Self {
        let r = Registry::new();
        let replay_store_errors = replay_store_errors(&r);
        let reloads = reloads(&r);
        let admin_refused = admin_refused(&r);
        let (requests, secret_matches, upstream_duration, verify_duration) = request_metrics(&r);
        let (
            replay_entries,
            buffered_body_bytes,
            replay_insertions,
            replay_evictions,
            replay_fail_open,
        ) = replay_metrics(&r);
        let (delivery_attempts, final_attempt_failures) = attempt_metrics(&r);
        let (
            spool_depth,
            spool_oldest_age,
            spool_dead_letters,
            spool_redeliveries,
            spool_fallbacks,
        ) = spool_metrics(&r);
        let spool_unreadable = gauge_vec(
            &r,
            "persona_guard_spool_unreadable_entries",
            "Spooled entries that cannot be read (I/O error, damaged, another key), kept and never delivered.",
            &["route"],
        );
        Metrics {
            requests,
            secret_matches,
            upstream_duration,
            verify_duration,
            replay_entries,
            buffered_body_bytes,
            replay_insertions,
            replay_evictions,
            reloads,
            replay_store_errors,
            replay_fail_open,
            delivery_attempts,
            final_attempt_failures,
            spool_depth,
            spool_oldest_age,
            spool_dead_letters,
            spool_unreadable,
            spool_redeliveries,
            spool_fallbacks,
            admin_refused,
            connections: ConnectionMetrics::new(&r),
            auth: AuthMetrics::new(&r),
            reconcile: ReconcileMetrics::new(&r),
            registry: r,
        }
    }

    /// Pre-creates the spool series of a spooling route at 0.
    pub fn register_spool_route(&self, route: &str) {
        for g in [
            &self.spool_depth,
            &self.spool_oldest_age,
            &self.spool_dead_letters,
            &self.spool_unreadable,
        ] {
            g.with_label_values(&[route]);
        }
        for r in SPOOL_RESULTS {
            self.spool_redeliveries.with_label_values(&[route, r]);
        }
        for r in SPOOL_FALLBACKS {
            self.spool_fallbacks.with_label_values(&[route, r]);
        }
    }

    /// Pre-creates every outcome, attempt and final-failure series of a route at 0, so rates work from the start.
    pub fn register_route(&self, route: &str) {
        for o in Outcome::all() {
            if !matches!(
                o,
                Outcome::Passthrough
                    | Outcome::NotFound
                    | Outcome::MalformedRequest
                    | Outcome::InvalidPath
            ) {
                self.requests.with_label_values(&[route, o.code()]);
            }
        }
        for a in crate::attempts::LABELS {
            self.delivery_attempts.with_label_values(&[route, a]);
        }
        self.final_attempt_failures.with_label_values(&[route]);
    }

    /// Pre-creates the outcome series of requests under no route.
    pub fn register_no_route(&self) {
        for o in Outcome::all().filter(|o| o.applies_off_route()) {
            self.requests.with_label_values(&[NO_ROUTE, o.code()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The `secret` label of a secret's position (no allocation for the first ten).
pub fn index_label(index: usize) -> std::borrow::Cow<'static, str> {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(index) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(index.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_labels_are_decimal_positions() {
        assert_eq!(index_label(0), "0");
        assert_eq!(index_label(9), "9");
        assert_eq!(index_label(10), "10");
        assert_eq!(index_label(123), "123");
    }
}
