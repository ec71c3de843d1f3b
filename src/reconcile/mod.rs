//! Reconciliation with Persona's Events API (the contract's §9): find the
//! events Persona has that never reached the app, and report or backfill them.
//!
//! * [`api`]: the API (listing with `links.next`, the webhook's enabled
//!   events, 429 and `RateLimit-*`), blocking, on the project's one client;
//! * [`run`]: one run's listing and judging against the replay store
//!   ([`crate::replay::ReplayStore::peek`]) and the spool's dead letters;
//! * [`Status`]: each route's last run, what `GET /reconcile` shows;
//! * [`crate::reconciler`] (above this module, beside the state): the
//!   background loop and the backfill, a missing event delivered like a
//!   verified first-time delivery, with [`SOURCE_HEADER`].
//!
//! A missing event is one in the window, older than `grace`, accepted by the
//! route (`events`) and the webhook (`webhook_id`), for which the replay
//! store holds nothing (neither delivered nor in flight: a spooled live
//! entry holds its id in flight) and that is not a dead letter of the
//! route's spool. With the memory store only events created after the store
//! started are judged: it cannot know about earlier ones.

pub mod api;
pub mod run;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::HeaderName;
use serde::Serialize;

pub use api::{Api, ApiError, Fetch, OutboundFetch};
pub use run::{Found, MAX_PAGES, Missing, Scope, find_missing};

/// Set on a backfilled delivery; stripped from every client request like the
/// trusted headers, so the app can trust it.
pub static SOURCE_HEADER: HeaderName = HeaderName::from_static("x-persona-guard-source");

/// The value of [`SOURCE_HEADER`].
pub const SOURCE_RECONCILED: &str = "reconciled";

/// One route's last run, as `GET /reconcile` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteRun {
    pub mode: &'static str,
    /// When the run ended (Unix seconds).
    pub at: u64,
    /// How long the run took (listing, judging, backfilling).
    pub duration_ms: u64,
    pub events_seen: u64,
    pub events_judged: u64,
    pub missing: Vec<String>,
    /// The missing events' id, type and created-at (the command's table).
    #[serde(skip)]
    pub missing_events: Vec<(String, String, String)>,
    /// Backfill only: what each missing event came to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backfilled: Vec<(String, &'static str)>,
    /// Why the run stopped early (never the key or a body).
    pub error: Option<String>,
    /// The last run that read the whole window (Unix seconds).
    pub last_success: Option<u64>,
    /// No run before this (Unix seconds): a 429's pause.
    pub resume_at: Option<u64>,
    /// Memory store: only events created after this were judged (RFC 3339).
    pub judged_since: Option<String>,
}

/// Every reconciling route's last run, and the ids already reported (each
/// missing event is counted once).
#[derive(Default)]
pub struct Status {
    runs: Mutex<HashMap<String, RouteRun>>,
    reported: Mutex<HashMap<String, HashSet<String>>>,
}

impl Status {
    pub fn set(&self, route: &str, run: RouteRun) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.insert(route.to_string(), run);
    }

    pub fn get(&self, route: &str) -> Option<RouteRun> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.get(route).cloned()
    }

    /// Every route's last run.
    pub fn all(&self) -> Vec<(String, RouteRun)> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = runs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The ids of `missing` not reported before on `route`; the set keeps
    /// only what is still missing, so it stays bounded by the window.
    pub fn first_seen(&self, route: &str, missing: &[Missing]) -> Vec<String> {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let seen = reported.entry(route.to_string()).or_default();
        let now: HashSet<String> = missing.iter().map(|m| m.event.id.clone()).collect();
        let new = now.difference(seen).cloned().collect();
        *seen = now;
        new
    }
}

/// The run's outcome label for `persona_guard_reconcile_runs_total`.
pub fn run_result(found: &Found) -> &'static str {
    match (&found.error, &found.store_error) {
        (_, Some(_)) => "store_error",
        (Some(ApiError::RateLimited { .. }), _) => "rate_limited",
        (Some(_), _) => "api_error",
        (None, None) => "ok",
    }
}

/// The Persona API of a route's rule, over `fetch`.
pub fn api_for(rule: &crate::config::ReconcileRule, fetch: Arc<dyn Fetch>) -> Api {
    Api::new(fetch, &rule.api_base, rule.api_key.clone(), rule.inflection)
}
