//! Process wiring: logging, the pingora server with the proxy and admin
//! services, SIGHUP reload.

mod connection;
mod lifecycle;
mod limits;
mod reload;

use std::io::IsTerminal;
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
use crate::config::{Config, LogFormat};
use crate::metrics::Metrics;
use crate::proxy::Guard;
use crate::replay::kind;
use crate::spool;
use crate::state::Shared;
use crate::telemetry::Telemetry;
use crate::tls::ReloadableCert;
use connection::ClientConnection;
use lifecycle::Drain;
use limits::Connections;
use pingora::apps::HttpServerOptions;

/// Installs the log subscriber. `RUST_LOG` filters (default `info`); pingora's
/// own events are capped at `warn` whatever `RUST_LOG` says, because its debug
/// lines can quote raw request heads (and so signatures). Colour codes are
/// written only when stderr is a terminal, never into a file or a pipe.
pub fn init_logging(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = filter_fn(|meta| {
        !meta.target().starts_with("pingora") || *meta.level() <= tracing::Level::WARN
    });
    let registry = tracing_subscriber::registry().with(filter).with(cap);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        eprintln!("persona-guard: a log subscriber was already installed");
    }
}

/// The delivery spool a route needs, as [`build_spool`] finds it.
enum SpoolStart {
    /// No route spools.
    None,
    /// Opened: its handle (holding the directory's lock, when embedded).
    Open(Arc<spool::Handle>),
    /// The embedded spool's directory is locked by another process: the
    /// process starts without it and takes it when the lock is free
    /// ([`wait_for_spool`]).
    Locked(std::path::PathBuf),
}

/// The delivery spool, when a route spools: a directory beside a memory
/// replay store, Redis streams beside a Redis one (so every replica shares
/// it). A spool that cannot be opened stops the start: better a clear error
/// than a process that answers 202 it could not keep.
fn build_spool(cfg: &Config) -> Result<SpoolStart, String> {
    if cfg
        .policy
        .routes
        .iter()
        .all(|r| r.spool == crate::config::SpoolMode::Off)
    {
        return Ok(SpoolStart::None);
    }
    let s = &cfg.process.spool;
    let handle = match kind::spool(&cfg.process.store) {
        kind::Spool::Redis(r) => spool::Handle::new(Arc::new(
            spool::redis::RedisSpool::new(r, s.max_bytes, s.key.clone())
                .map_err(|e| format!("spool: {e}"))?,
        )),
        kind::Spool::Dir => {
            let dir = s
                .dir
                .as_deref()
                .ok_or("spool.dir: required when a route spools and replay.store = \"memory\"")?;
            let Some(lock) =
                spool::dir::DirLock::try_acquire(dir).map_err(|e| format!("spool.dir: {e}"))?
            else {
                return Ok(SpoolStart::Locked(dir.to_owned()));
            };
            open_dir_spool(cfg, dir, lock)?
        }
    };
    Ok(SpoolStart::Open(Arc::new(handle)))
}

/// Opens the embedded spool in `dir`, whose `lock` this process holds.
fn open_dir_spool(
    cfg: &Config,
    dir: &Path,
    lock: spool::dir::DirLock,
) -> Result<spool::Handle, String> {
    let s = &cfg.process.spool;
    let store = spool::dir::DirSpool::open(dir, s.max_bytes, s.key.clone())
        .map_err(|e| format!("spool.dir: {e}"))?;
    Ok(spool::Handle::with_lock(Arc::new(store), lock))
}

/// Starts the redelivery worker of `spool` and makes it the process's.
fn start_spool(shared: &Arc<Shared>, spool: Arc<spool::Handle>, connector: Connector) {
    let _ = shared.spool.set(spool.clone());
    crate::redelivery::spawn(shared.clone(), spool, connector);
}

/// Waits, on a thread of its own, for the lock on the spool directory `dir`
/// that another process holds (a rolling update on a shared volume), then
/// opens the spool and starts its worker. Meanwhile `/readyz` answers 503
/// and spooling routes answer as if they had no spool (nothing is answered
/// 202). A SIGTERM while waiting leaves the spool to its holder.
fn wait_for_spool(shared: &Arc<Shared>, dir: std::path::PathBuf, connector: Connector) {
    use std::sync::atomic::Ordering;
    shared.spool_waiting.store(true, Ordering::SeqCst);
    tracing::warn!(
        dir = %dir.display(),
        "spool.dir is locked by another process (one spool directory serves one process): \
         waiting for it; /readyz answers 503 and nothing is spooled until this process holds it"
    );
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("spool-lock".into())
        .spawn(move || {
            let opened = spool::dir::DirLock::acquire(&dir)
                .map_err(|e| format!("spool.dir: {e}"))
                .and_then(|lock| {
                    if shared.draining.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    open_dir_spool(&shared.policy.load().config, &dir, lock).map(Some)
                });
            match opened {
                Ok(Some(handle)) => {
                    tracing::info!(dir = %dir.display(), "spool.dir lock acquired: spooling and redelivering");
                    start_spool(&shared, Arc::new(handle), connector);
                    shared.spool_waiting.store(false, Ordering::SeqCst);
                }
                Ok(None) => {}
                Err(e) => {
                    // As at start: a spool that cannot be opened stops the process.
                    tracing::error!("{e}");
                    std::process::exit(1);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the thread that waits for the spool directory's lock: {e}");
    }
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
        threads: cfg.process.threads,
        ca_file: cfg
            .process
            .upstream_ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
        grace_period_seconds: Some(cfg.process.grace_period.as_secs()),
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
    let Some(loaded) = &cfg.process.listen_cert else {
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

/// The public listener's service: [`ClientConnection`] (the connection
/// limits, TLS when configured, the HTTP/2 preface, the HTTP/1 head
/// deadline), then pingora's proxy app running [`Guard`].
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
            inner: Arc::new(app),
            tls,
            shared: shared.clone(),
            connections: Connections::new(&shared.metrics.connections),
        },
    )
}

/// Serves until SIGTERM/SIGINT. Returns after the graceful shutdown.
pub fn run(config_path: Option<&Path>, cfg: Config) -> Result<(), String> {
    let mut server = pingora_server(&cfg);
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let built = kind::build(&cfg.process).and_then(|s| {
        Ok((
            s,
            listener_tls(&cfg)?,
            build_spool(&cfg)?,
            Telemetry::start(&cfg.process.tracing)?,
        ))
    });
    let (store, (tls, cert), spool, telemetry) = match built {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!("{e}");
            return Err(e);
        }
    };
    let process = cfg.process.clone();
    let (listen, admin_addr, idle_timeout) = (process.listen, process.admin, process.idle_timeout);
    let upstream = cfg.policy.upstream.address;
    let routes: Vec<String> = cfg.policy.routes.iter().map(|r| r.path.clone()).collect();
    let shared = Arc::new(Shared::new(cfg, store, Metrics::new(), connector));
    if let Some(t) = telemetry {
        let _ = shared.telemetry.set(t);
    }
    // The worker's own pool: a backlog never takes the request path's connections.
    let worker_connector = || {
        Connector::new(Some(ConnectorOptions::from_server_conf(
            &server.configuration,
        )))
    };
    match spool {
        SpoolStart::None => {}
        SpoolStart::Open(spool) => start_spool(&shared, spool, worker_connector()),
        SpoolStart::Locked(dir) => wait_for_spool(&shared, dir, worker_connector()),
    }
    // Its own thread, runtime and pool; it follows reloads.
    crate::reconciler::spawn(shared.clone(), worker_connector());

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
