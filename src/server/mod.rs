//! Process wiring: logging, the pingora server with the proxy and admin
//! services, SIGHUP reload.

mod connection;
mod lifecycle;
mod reload;

use std::path::Path;
use std::sync::Arc;

use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::v1::Connector;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

use crate::admin::Admin;
use crate::config::{Config, LogFormat, ProcessConfig, StoreKind};
use crate::metrics::Metrics;
use crate::proxy::Guard;
use crate::replay::ReplayStore;
use crate::replay::memory::{MemoryStore, SystemClock};
use crate::replay::redis::RedisStore;
use crate::spool;
use crate::state::Shared;
use crate::telemetry::Telemetry;
use crate::tls::ReloadableCert;
use connection::{ClientConnection, HeaderTimeout};
use lifecycle::Drain;
use pingora::apps::HttpServerOptions;

/// Installs the log subscriber. `RUST_LOG` filters (default `info`); pingora's
/// own events are capped at `warn` whatever `RUST_LOG` says, because its debug
/// lines can quote raw request heads (and so signatures).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = filter_fn(|meta| {
        !meta.target().starts_with("pingora") || *meta.level() <= tracing::Level::WARN
    });
    let registry = tracing_subscriber::registry().with(filter).with(cap);
    let result = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        eprintln!("persona-guard: a log subscriber was already installed");
    }
}

fn build_store(cfg: &Config) -> Result<Arc<dyn ReplayStore>, String> {
    Ok(match &cfg.replay.store {
        StoreKind::Memory => Arc::new(MemoryStore::new(
            cfg.replay.capacity,
            Arc::new(SystemClock::default()),
        )),
        StoreKind::Redis(r) => {
            Arc::new(RedisStore::new(r).map_err(|e| format!("replay store: {e}"))?)
        }
    })
}

/// The delivery spool, when a route spools: a directory beside a memory
/// replay store, Redis streams beside a Redis one (so every replica shares
/// it). A spool that cannot be opened stops the start: better a clear error
/// than a process that answers 202 it could not keep.
fn build_spool(cfg: &Config) -> Result<Option<Arc<spool::Handle>>, String> {
    if cfg
        .routes
        .iter()
        .all(|r| r.spool == crate::config::SpoolMode::Off)
    {
        return Ok(None);
    }
    let s = &cfg.spool;
    let store: Arc<dyn spool::SpoolStore> = match &cfg.replay.store {
        StoreKind::Redis(r) => Arc::new(
            spool::redis::RedisSpool::new(r, s.max_bytes, s.key.clone())
                .map_err(|e| format!("spool: {e}"))?,
        ),
        StoreKind::Memory => {
            let dir = s
                .dir
                .as_deref()
                .ok_or("spool.dir: required when a route spools and replay.store = \"memory\"")?;
            Arc::new(
                spool::dir::DirSpool::open(dir, s.max_bytes, s.key.clone())
                    .map_err(|e| format!("spool.dir: {e}"))?,
            )
        }
    };
    Ok(Some(Arc::new(spool::Handle::new(store))))
}

/// Closes the replay store (its background tasks and connections) on a
/// runtime of its own: pingora's are gone by now.
fn close_store(shared: &Shared) {
    if let Some(rt) = side_runtime("closing the replay store") {
        rt.block_on(shared.store().close());
    }
}

/// Closes the spool's connections (entries stay where they are).
fn close_spool(shared: &Shared) {
    if let (Some(spool), Some(rt)) = (shared.spool.get(), side_runtime("closing the spool")) {
        rt.block_on(spool.store.close());
    }
}

/// Exports the spans still batched and stops the exporter (tracing on).
fn flush_traces(shared: &Shared) {
    if let Some(t) = shared.telemetry.get() {
        t.shutdown();
    }
}

/// A single-threaded runtime for work beside pingora's (signals, shutdown);
/// `None`, logged with `what` it was for, if the system refuses one.
fn side_runtime(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!("cannot start a runtime for {what}: {e}");
            None
        }
    }
}

/// pingora's server, configured from the file's process settings.
fn pingora_server(cfg: &Config) -> Server {
    let mut conf = ServerConf {
        threads: cfg.threads,
        ca_file: cfg
            .upstream_ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
        grace_period_seconds: Some(cfg.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 128;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The listener's TLS acceptor and its replaceable certificate, from the
/// key pair the configuration loaded; `(None, None)` for plain TCP.
fn listener_tls(cfg: &Config) -> Result<(Option<Acceptor>, Option<Arc<ReloadableCert>>), String> {
    let Some(loaded) = &cfg.listen_cert else {
        return Ok((None, None));
    };
    let checked = crate::tls::check_loaded(loaded.key()).map_err(|e| format!("listen.tls: {e}"))?;
    for w in &checked.warnings {
        tracing::warn!("listen.tls: {w}");
    }
    let cert = Arc::new(ReloadableCert::new(checked.key));
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| format!("listen.tls: {e}"))?;
    settings.set_cert_resolver(cert.clone());
    settings.enable_h2();
    Ok((Some(settings.build()), Some(cert)))
}

/// The public listener's service: [`ClientConnection`] (TLS, when
/// configured, and the HTTP/2 preface), [`HeaderTimeout`], then pingora's
/// proxy app running [`Guard`].
fn proxy_service(
    server: &Server,
    shared: &Arc<Shared>,
    tls: Option<Acceptor>,
    idle_timeout: std::time::Duration,
) -> Service<impl pingora::apps::ServerApp + Send + Sync + 'static> {
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Guard {
            shared: shared.clone(),
        },
    );
    // pingora's own bound on an HTTP/2 connection with no open stream
    // (`accept_downstream_sessions`): it closes the connection. pingora reads
    // it per connection through a reference (`server_options()`), which cannot
    // follow a reload: HTTP/2 keeps the start value (`reload` says so).
    let mut server_options = HttpServerOptions::default();
    server_options.h2_idle_timeout = Some(idle_timeout);
    app.server_options = Some(server_options);
    // TLS, when configured, is done by `ClientConnection` (pingora's listener
    // handshake has a fixed 60 s bound).
    Service::new(
        "persona-guard".to_string(),
        ClientConnection {
            inner: Arc::new(HeaderTimeout {
                inner: Arc::new(app),
                shared: shared.clone(),
            }),
            tls,
            shared: shared.clone(),
        },
    )
}

/// Serves until SIGTERM/SIGINT. Returns after the graceful shutdown.
pub fn run(config_path: Option<&Path>, cfg: Config) -> Result<(), String> {
    let mut server = pingora_server(&cfg);
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let built = build_store(&cfg).and_then(|s| {
        Ok((
            s,
            listener_tls(&cfg)?,
            build_spool(&cfg)?,
            Telemetry::start(&cfg.tracing)?,
        ))
    });
    let (store, (tls, cert), spool, telemetry) = match built {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!("{e}");
            return Err(e);
        }
    };
    let (listen, admin_addr, upstream) = (cfg.listen, cfg.admin, cfg.upstream.address);
    let process = ProcessConfig::of(&cfg);
    let idle_timeout = cfg.idle_timeout;
    let routes: Vec<String> = cfg.routes.iter().map(|r| r.path.clone()).collect();
    let shared = Arc::new(Shared::new(cfg, store, Metrics::new(), connector));
    if let Some(t) = telemetry {
        let _ = shared.telemetry.set(t);
    }
    if let Some(spool) = spool {
        let _ = shared.spool.set(spool.clone());
        // The worker's own pool: a backlog never takes the request path's connections.
        let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
            &server.configuration,
        )));
        crate::redelivery::spawn(shared.clone(), spool, connector);
    }

    let mut proxy = proxy_service(&server, &shared, tls, idle_timeout);
    proxy.add_tcp(&listen.to_string());
    let mut admin = Service::new(
        "admin".to_string(),
        Admin {
            shared: shared.clone(),
        },
    );
    admin.add_tcp(&admin_addr.to_string());
    server.add_service(proxy);
    server.add_service(admin);

    lifecycle::spawn_watcher(&server, shared.clone(), listen);
    reload::spawn_reloader(
        config_path.map(Path::to_path_buf),
        shared.clone(),
        cert,
        process,
    );
    tracing::info!(
        listen = %listen,
        admin = %admin_addr,
        upstream = %upstream,
        routes = ?routes,
        "persona-guard starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain {
            shared: shared.clone(),
        }),
    });
    // SIGINT, or a grace period that ran out with requests in flight.
    close_store(&shared);
    close_spool(&shared);
    flush_traces(&shared);
    tracing::info!("persona-guard stopped");
    Ok(())
}
