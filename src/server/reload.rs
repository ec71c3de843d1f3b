//! SIGHUP: re-read the route file and every secret, and swap the policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Config};
use crate::state::{Policy, Shared};
use crate::tls::ReloadableCert;

/// Re-reads the route file and every secret on SIGHUP. An invalid file leaves
/// the running configuration in place; the replay memory is never touched.
pub fn spawn_reloader(
    path: PathBuf,
    shared: Arc<Shared>,
    cert: Option<Arc<ReloadableCert>>,
    h2_idle_timeout: Duration,
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
                reload(&path, &shared, cert.as_deref(), h2_idle_timeout);
            }
        })
    });
}

/// `h2_idle_timeout`: the `idle_timeout` pingora was given at start for HTTP/2.
fn reload(path: &Path, shared: &Shared, cert: Option<&ReloadableCert>, h2_idle_timeout: Duration) {
    let running = shared.policy.load_full();
    let current = &running.config;
    match config::load(path) {
        Ok(new) => {
            match (cert, &new.listen_tls) {
                (Some(cert), Some(tls)) => match cert.reload(tls) {
                    Ok(warnings) => {
                        for w in &warnings {
                            tracing::warn!("listen.tls: {w}");
                        }
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::error!(
                            "reload refused, the running configuration stays: listen.tls: {e}"
                        );
                        shared.metrics.reloads.with_label_values(&["error"]).inc();
                        return;
                    }
                },
                (None, None) => {}
                _ => tracing::warn!("turning TLS on or off on the listener needs a restart"),
            }
            if new.listen != current.listen || new.admin != current.admin {
                tracing::warn!(
                    "listen and admin addresses change only on restart; keeping the bound ones"
                );
            }
            if new.idle_timeout != h2_idle_timeout {
                tracing::warn!(
                    "server.idle_timeout: HTTP/1 connections use the new value; \
                     HTTP/2 connections keep the one from start until a restart"
                );
            }
            let routes: Vec<&str> = new.routes.iter().map(|r| r.path.as_str()).collect();
            tracing::info!(?routes, "configuration reloaded");
            shared.budget.set_limit(new.max_buffered);
            let kept = Config {
                listen: current.listen,
                listen_tls: current.listen_tls.clone(),
                admin: current.admin,
                upstream_ca_file: current.upstream_ca_file.clone(),
                threads: current.threads,
                ..new
            };
            shared
                .policy
                .store(Arc::new(Policy::compile(kept, &shared.metrics)));
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
        }
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            shared.metrics.reloads.with_label_values(&["error"]).inc();
        }
    }
}
