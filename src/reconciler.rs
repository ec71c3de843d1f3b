//! The reconciler (the contract's §9; what it judges is [`crate::reconcile`]):
//! one thread and runtime of its own (never the request
//! path's), waking every second to run each reconciling route that is due.
//! A route is due `interval` after its last run, or later when the API named
//! a later time (a 429). Routes follow reloads: each tick reads the running
//! policy. Failures are logged and counted; they never touch readiness.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora::connectors::http::v1::Connector;

use crate::reconcile::{Fetch, Found, RouteRun, Scope, find_missing, run_result};

pub mod backfill;
pub mod cli;
use crate::config::ReconcileMode;
use crate::state::Shared;

/// Starts the reconciler when a route reconciles now (or may after a reload).
pub fn spawn(shared: Arc<Shared>, connector: Connector) {
    let fetch: Arc<dyn Fetch> = Arc::new(crate::reconcile::OutboundFetch::standard());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the reconciler's runtime: {e}; no reconciliation");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || runtime.block_on(run(shared, connector, fetch)));
    if let Err(e) = spawned {
        tracing::error!("cannot start the reconciler's thread: {e}; no reconciliation");
    }
}

async fn run(shared: Arc<Shared>, connector: Connector, fetch: Arc<dyn Fetch>) {
    let mut due: HashMap<String, u64> = HashMap::new();
    loop {
        if shared.draining.load(Ordering::SeqCst) {
            return;
        }
        let policy = shared.policy.load_full();
        let routes: Vec<(String, Duration)> = policy
            .config
            .policy
            .routes
            .iter()
            .filter_map(|r| r.reconcile.as_ref().map(|c| (r.path.clone(), c.interval)))
            .collect();
        for (path, interval) in routes {
            let now = crate::spool::now_ms();
            if due.get(&path).is_some_and(|d| now < *d) {
                continue;
            }
            let run = run_route(&shared, &path, &connector, fetch.clone(), None, None).await;
            let next = crate::spool::now_ms() + interval.as_millis() as u64;
            let resume = run.resume_at.map(|s| s * 1000).unwrap_or(0);
            due.insert(path, next.max(resume));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One run over the route at `path` of the running policy: list, judge,
/// then report (log, count) or backfill; recorded in [`Shared::reconcile`]
/// and the metrics. `since` replaces `window`, `mode` the route's mode
/// (the `reconcile` command's flags).
pub async fn run_route(
    shared: &Arc<Shared>,
    path: &str,
    connector: &Connector,
    fetch: Arc<dyn Fetch>,
    since: Option<Duration>,
    mode: Option<ReconcileMode>,
) -> RouteRun {
    let policy = shared.policy.load_full();
    let Some(compiled) = policy.routes.iter().find(|c| c.route.path == path) else {
        return RouteRun::default();
    };
    let Some(rule) = compiled.route.reconcile.clone() else {
        return RouteRun::default();
    };
    let mode = mode.unwrap_or(rule.mode);
    let api = Arc::new(crate::reconcile::api_for(&rule, fetch));
    let store = shared.store();
    let since_ms = store.remembers_since_ms();
    let scope = Scope {
        route: &compiled.route,
        store,
        dead: dead_letters(shared, path).await,
        webhook_events: None,
        now_ms: crate::spool::now_ms(),
        window: since.unwrap_or(rule.window),
        grace: rule.grace,
        since_ms,
        max_pages: crate::reconcile::MAX_PAGES,
        keep_objects: mode == ReconcileMode::Backfill,
    };
    let started = std::time::Instant::now();
    let found = list(&api, scope, rule.webhook_id.as_deref()).await;
    let mut run = account(shared, path, &found, mode, since_ms);
    if mode == ReconcileMode::Backfill {
        let m = &shared.metrics.reconcile;
        for missing in &found.missing {
            let r = backfill::deliver(shared, &policy, compiled, connector, missing).await;
            m.backfilled.with_label_values(&[path, r]).inc();
            run.backfilled.push((missing.event.id.clone(), r));
        }
    }
    run.duration_ms = started.elapsed().as_millis() as u64;
    shared.reconcile.set(path, run.clone());
    run
}

/// The webhook's enabled events (with `webhook_id`), then the listing.
async fn list(
    api: &Arc<crate::reconcile::Api>,
    mut scope: Scope<'_>,
    webhook: Option<&str>,
) -> Found {
    let Some(id) = webhook else {
        return find_missing(api, &scope).await;
    };
    let (a, id, now_ms) = (api.clone(), id.to_string(), scope.now_ms);
    match tokio::task::spawn_blocking(move || a.webhook_events(&id, now_ms)).await {
        Ok(Ok(events)) => {
            scope.webhook_events = Some(events.into_iter().collect());
            find_missing(api, &scope).await
        }
        Ok(Err(e)) => Found {
            resume_at_ms: match e {
                crate::reconcile::ApiError::RateLimited { resume_at_ms } => Some(resume_at_ms),
                _ => None,
            },
            error: Some(e),
            ..Found::default()
        },
        Err(_) => Found {
            error: Some(crate::reconcile::ApiError::Transport(
                "the request's task failed".into(),
            )),
            ..Found::default()
        },
    }
}

/// Counts and logs a run (each missing event logged and counted on the
/// first run that finds it); the run as `GET /reconcile` shows it.
fn account(
    shared: &Shared,
    path: &str,
    found: &Found,
    mode: ReconcileMode,
    since_ms: Option<u64>,
) -> RouteRun {
    let result = run_result(found);
    let m = &shared.metrics.reconcile;
    m.runs.with_label_values(&[path, result]).inc();
    m.missing
        .with_label_values(&[path])
        .set(found.missing.len() as i64);
    let first: HashSet<String> = shared
        .reconcile
        .first_seen(path, &found.missing)
        .into_iter()
        .collect();
    m.missing_total
        .with_label_values(&[path])
        .inc_by(first.len() as u64);
    for e in found
        .missing
        .iter()
        .map(|m| &m.event)
        .filter(|e| first.contains(&e.id))
    {
        tracing::warn!(
            route = path,
            event_id = e.id.as_str(),
            event_type = e.name.as_str(),
            created_at = e.created_at.as_deref(),
            "reconcile: an event Persona has never reached the app"
        );
    }
    let error = (found.error.as_ref().map(ToString::to_string)).or(found.store_error.clone());
    if let Some(e) = &error {
        tracing::warn!(
            route = path,
            error = e.as_str(),
            "reconcile: the run stopped early"
        );
    }
    let at = crate::spool::now_ms() / 1000;
    let mut last_success = shared.reconcile.get(path).and_then(|r| r.last_success);
    if result == "ok" {
        m.last_success.with_label_values(&[path]).set(at as i64);
        last_success = Some(at);
    }
    RouteRun {
        mode: match mode {
            ReconcileMode::Report => "report",
            ReconcileMode::Backfill => "backfill",
        },
        at,
        duration_ms: 0,
        events_seen: found.seen,
        events_judged: found.judged,
        missing: found.missing.iter().map(|m| m.event.id.clone()).collect(),
        missing_events: found
            .missing
            .iter()
            .map(|m| {
                let e = &m.event;
                (
                    e.id.clone(),
                    e.name.clone(),
                    e.created_at.clone().unwrap_or_default(),
                )
            })
            .collect(),
        backfilled: Vec::new(),
        error,
        last_success,
        resume_at: found.resume_at_ms.map(|ms| ms.div_ceil(1000)),
        judged_since: since_ms.map(rfc3339),
    }
}

/// Unix milliseconds as an RFC 3339 time.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The event ids of the route's dead letters (not missing: kept for an operator).
async fn dead_letters(shared: &Shared, path: &str) -> HashSet<String> {
    let Some(spool) = shared.spool.get() else {
        return HashSet::new();
    };
    match spool.store.dead(path).await {
        Ok(entries) => entries
            .into_iter()
            .filter_map(|e| e.record.event_id)
            .collect(),
        Err(_) => HashSet::new(),
    }
}
