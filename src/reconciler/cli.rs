//! `persona-guard reconcile`: one run per reconciling route (or the one
//! named), a table of the missing events, and the exit status of the
//! contract's §9: 0 none missing, 1 some missing, 2 the API (or the store)
//! could not be read, 64 a configuration that cannot reconcile from a
//! separate process (a memory store) or has no such route.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::http::v1::Connector;

use crate::config::{Config, ReconcileMode, StoreKind};
use crate::metrics::Metrics;
use crate::reconcile::{Fetch, OutboundFetch};
use crate::state::Shared;

/// Configuration errors, as every command exits on them.
pub const EXIT_CONFIG: u8 = 64;

/// Runs the command; the process's exit status.
pub fn run(cfg: Config, route: Option<&str>, since: Option<Duration>, backfill: bool) -> u8 {
    if !matches!(cfg.process.store, StoreKind::Redis(_)) {
        eprintln!(
            "persona-guard reconcile: needs replay.store = \"redis\": a separate process cannot see the memory store of a running proxy (its reconciler runs inside it: see GET /reconcile)"
        );
        return EXIT_CONFIG;
    }
    let paths: Vec<String> = cfg
        .policy
        .routes
        .iter()
        .filter(|r| r.reconcile.is_some() && route.is_none_or(|p| p == r.path))
        .map(|r| r.path.clone())
        .collect();
    if paths.is_empty() {
        eprintln!("persona-guard reconcile: no route with [route.reconcile] matches");
        return EXIT_CONFIG;
    }
    let store = match crate::replay::kind::build(&cfg.process) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("persona-guard reconcile: {e}");
            return EXIT_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("persona-guard reconcile: cannot start a runtime: {e}");
            return 2;
        }
    };
    let mode = backfill.then_some(ReconcileMode::Backfill);
    let fetch: Arc<dyn Fetch> = Arc::new(OutboundFetch::standard());
    runtime.block_on(async move {
        let connector = Connector::new(None);
        let shared = Arc::new(Shared::new(cfg, store, Metrics::new(), connector));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{:<32} {:<32} {:<26} STATUS",
            "ID", "TYPE", "CREATED-AT"
        );
        let (mut missing, mut failed) = (0, false);
        for path in &paths {
            let connector = Connector::new(None);
            let run = super::run_route(&shared, path, &connector, fetch.clone(), since, mode).await;
            for (i, (id, ty, created)) in run.missing_events.iter().enumerate() {
                let status = run.backfilled.get(i).map_or("missing", |(_, r)| *r);
                let _ = writeln!(out, "{id:<32} {ty:<32} {created:<26} {status}");
            }
            missing += run.missing.len();
            if let Some(e) = &run.error {
                failed = true;
                eprintln!("persona-guard reconcile: {path}: {e}");
            }
        }
        shared.store().close().await;
        match (failed, missing) {
            (true, _) => 2,
            (false, 0) => 0,
            _ => 1,
        }
    })
}
