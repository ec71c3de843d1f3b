//! SIGHUP: re-read the route file and every secret, and apply the new file
//! whole, or name each key that cannot change without a restart.
//!
//! A valid file becomes the new [`Policy`] (routes, secrets, upstreams,
//! timeouts, limits, the replay windows) for every request that starts after
//! it. A new listener certificate is checked and swapped in. Changed Redis
//! settings (address, password, key prefix, timeout) get a new client, and
//! the old one is dropped once the deliveries that hold it have settled. The
//! keys [`ProcessConfig::diff`] names keep their running value, each with a
//! warning. An invalid file, or a certificate that fails its checks, changes
//! nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{self, Config, ProcessConfig, RedisSettings};
use crate::replay::ReplayStore;
use crate::replay::kind::OnReload;
use crate::state::{Policy, Shared};
use crate::tls::ReloadableCert;

/// Re-reads the route file on every SIGHUP, on a thread of its own.
pub fn spawn_reloader(
    path: Option<PathBuf>,
    shared: Arc<Shared>,
    cert: Option<Arc<ReloadableCert>>,
    start: ProcessConfig,
) {
    let Some(runtime) = super::side_runtime("SIGHUP reloads (they will not happen)") else {
        return;
    };
    // Register the handler now, before the thread runs, so an early SIGHUP
    // never falls through to the default action (terminating the process).
    let mut hup = match runtime
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            while hup.recv().await.is_some() {
                reload(path.as_deref(), &shared, cert.as_deref(), &start);
            }
        })
    });
}

/// `start`: the settings the process was started with.
fn reload(
    path: Option<&Path>,
    shared: &Shared,
    cert: Option<&ReloadableCert>,
    start: &ProcessConfig,
) {
    let refused = |why: &dyn std::fmt::Display| {
        tracing::error!("reload refused, the running configuration stays: {why}");
        shared.metrics.reloads.with_label_values(&["error"]).inc();
    };
    let new = match config::load(path) {
        Ok(new) => new,
        Err(e) => return refused(&e),
    };
    if let (Some(cert), Some(loaded)) = (cert, &new.process.listen_cert) {
        match cert.replace(loaded.key()) {
            Ok(warnings) => {
                for w in &warnings {
                    tracing::warn!("listen.tls: {w}");
                }
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => return refused(&format_args!("listen.tls: {e}")),
        }
    }
    for r in ProcessConfig::diff(start, &new.process) {
        tracing::warn!(
            key = r.key.as_str(),
            "needs a restart to change; {}",
            r.note
        );
    }
    let running = shared.policy.load_full();
    let mut kept = without_spool(
        ProcessConfig::keep(new, &running.config),
        shared.spool.get().is_some() || shared.spool_waiting.load(Ordering::SeqCst),
    );
    let on_reload = OnReload::of(&running.config.process.store, &kept.process.store);
    match on_reload.apply() {
        Ok(None) => {}
        Ok(Some(store)) => swap_store(shared, &on_reload, store),
        Err(e) => {
            tracing::error!(
                key = "replay.redis_url",
                "the new Redis settings cannot be applied, the running client stays: {e}"
            );
            kept.process.store = running.config.process.store.clone();
        }
    }
    let routes: Vec<&str> = kept.policy.routes.iter().map(|r| r.path.as_str()).collect();
    tracing::info!(?routes, "configuration reloaded");
    shared.budget.set_limits(
        kept.policy.max_buffered,
        kept.policy.max_buffered_per_client,
    );
    shared.policy.store(Arc::new(Policy::compile(
        kept,
        &shared.metrics,
        &shared.keyring,
    )));
    shared.metrics.reloads.with_label_values(&["ok"]).inc();
}

/// Routes that a reload turns to spooling when the process started without a
/// spool (no route spooled then): they cannot spool until a restart, and say
/// so; until then they answer as `spool = "off"`.
fn without_spool(mut cfg: Config, has_spool: bool) -> Config {
    if has_spool {
        return cfg;
    }
    for (i, r) in cfg.policy.routes.iter_mut().enumerate() {
        if r.spool != config::SpoolMode::Off {
            tracing::warn!(
                key = format!("route[{i}].spool"),
                route = r.path.as_str(),
                "needs a restart to change: the process started with no spooling route, so it has no spool; the route answers as spool = \"off\" until then"
            );
            r.spool = config::SpoolMode::Off;
        }
    }
    cfg
}

/// Swaps in the new Redis client; the old one stays with the leases that
/// hold it and shuts down when the last of them settles. The delivery spool
/// beside it follows.
fn swap_store(shared: &Shared, on_reload: &OnReload<'_>, store: Arc<dyn ReplayStore>) {
    let OnReload::Rebuild { old, new } = *on_reload else {
        return;
    };
    drop(shared.swap_store(store));
    tracing::info!(changed = ?changed_keys(old, new), "Redis client rebuilt");
    if let Some(spool) = shared.spool.get() {
        follow_in_spool(&*spool.store, old, new);
    }
}

/// The delivery spool's Redis client follows new credentials, TLS or
/// timeout; another server, database or `key_prefix` (where none of its
/// entries are) waits for a restart, and says so.
fn follow_in_spool(spool: &dyn crate::spool::SpoolStore, old: &RedisSettings, new: &RedisSettings) {
    match spool.follow_redis(new) {
        Ok(true) => tracing::info!(
            changed = ?changed_keys(old, new),
            "the delivery spool's Redis client rebuilt"
        ),
        Ok(false) => tracing::warn!(
            key = "replay.redis_url",
            "needs a restart to change for the delivery spool: a new Redis server, database or key_prefix holds none of its entries; it keeps the Redis client it started with"
        ),
        Err(e) => tracing::error!(
            key = "replay.redis_url",
            "the delivery spool keeps its running Redis client: {e}"
        ),
    }
}

/// Which Redis settings differ (names only, never values).
fn changed_keys(old: &RedisSettings, new: &RedisSettings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.url != new.url {
        keys.push("replay.redis_url");
    }
    if old.password != new.password {
        keys.push("replay.redis_password");
    }
    if old.key_prefix != new.key_prefix {
        keys.push("replay.key_prefix");
    }
    if old.timeout != new.timeout {
        keys.push("replay.redis_timeout");
    }
    keys
}
