//! Process wiring: logging, the pingora server with the proxy and admin
//! services, SIGHUP reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::v1::Connector;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

use crate::admin::Admin;
use crate::config::StoreKind;
use crate::config::{self, Config, LogFormat};
use crate::h2_watch::H2Watch;
use crate::metrics::Metrics;
use crate::proxy::{Guard, Shared};
use crate::replay::ReplayStore;
use crate::replay::memory::{MemoryStore, SystemClock};
use crate::replay::redis::RedisStore;
use crate::tls::ReloadableCert;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;

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

/// Serves until SIGTERM/SIGINT. Returns after the graceful shutdown.
pub fn run(config_path: &Path, cfg: Config) -> Result<(), String> {
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

    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let store = match build_store(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return Err(e);
        }
    };
    let listen = cfg.listen;
    let cfg_tls = cfg.listen_tls.clone();
    let idle_timeout = cfg.idle_timeout;
    let admin_addr = cfg.admin;
    let routes: Vec<String> = cfg.routes.iter().map(|r| r.path.clone()).collect();
    let upstream = cfg.upstream.address;
    let shared = Arc::new(Shared::new(cfg, store, Metrics::new(), connector));

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
    let (tls, cert) = match &cfg_tls {
        Some(tls) => {
            let checked = crate::tls::load_checked(tls).map_err(|e| {
                tracing::error!("listen.tls: {e}");
                e
            })?;
            for w in &checked.warnings {
                tracing::warn!("listen.tls: {w}");
            }
            let cert = Arc::new(ReloadableCert::new(checked.key));
            let mut settings =
                TlsSettings::intermediate("", "").map_err(|e| format!("listen.tls: {e}"))?;
            settings.set_cert_resolver(cert.clone());
            settings.enable_h2();
            (Some(settings.build()), Some(cert))
        }
        None => (None, None),
    };
    let mut proxy = Service::new(
        "persona-guard".to_string(),
        ClientConnection {
            inner: Arc::new(HeaderTimeout {
                inner: Arc::new(app),
                shared: shared.clone(),
            }),
            tls,
            shared: shared.clone(),
        },
    );
    // TLS, when configured, is done by `ClientConnection` (pingora's listener
    // handshake has a fixed 60 s bound).
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

    spawn_reloader(
        config_path.to_path_buf(),
        shared.clone(),
        cert,
        idle_timeout,
    );
    tracing::info!(
        listen = %listen,
        admin = %admin_addr,
        upstream = %upstream,
        routes = ?routes,
        "persona-guard starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain { shared }),
    });
    tracing::info!("persona-guard stopped");
    Ok(())
}

/// The public listener's connection-level app: puts `header_timeout` on
/// everything a new connection does before its first request head, HTTP/2
/// included, then hands the connection to pingora's HTTP app.
///
/// Why a wrapper: in pingora 0.9.1 none of this can be configured. The
/// listener's TLS handshake has a fixed 60 s bound (`services/listening.rs`,
/// `run_endpoint`), and the HTTP/2 handshake and stream accept loop have none
/// (`apps/mod.rs`, the `ServerApp` impl for every `HttpServerApp`, and
/// `protocols/http/v2/server.rs`, `handshake` and `accept_downstream_sessions`):
/// a client that negotiated `h2` and then sent nothing, or only the preface,
/// kept its connection (and ~46 kB) for ever. So the listener is plain TCP and
/// this app, which pingora gives each accepted connection first:
///
/// 1. runs the TLS handshake with pingora's own acceptor (the same
///    `TlsSettings`, certificate resolver and ALPN as a TLS listener), within
///    `header_timeout` of the accept;
/// 2. on `h2`, waits, by the same deadline, for the client's connection preface
///    and first frame (SETTINGS), and wraps the stream in an [`H2Watch`], which
///    keeps the connection's first request head due by that deadline and each
///    later header block due within `header_timeout` of its start;
/// 3. passes the stream to [`HeaderTimeout`] and pingora's app.
///
/// The idle bound between HTTP/2 requests is pingora's own
/// (`HttpServerOptions::h2_idle_timeout`, set from `idle_timeout` in [`run`]).
/// For HTTP/1 only step 1 is new: [`HeaderTimeout`] bounds each read of its
/// heads, as before.
struct ClientConnection<A> {
    inner: Arc<A>,
    /// pingora's TLS acceptor for the listener; `None`: plain TCP.
    tls: Option<Acceptor>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl<A> ServerApp for ClientConnection<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let header_timeout = self.shared.config.load().header_timeout;
        let deadline = tokio::time::Instant::now() + header_timeout;
        if let Some(acceptor) = &self.tls {
            stream = match tokio::time::timeout_at(deadline, tls_accept(acceptor, stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("client TLS handshake failed: {e}");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("client TLS handshake not done within header_timeout");
                    return None;
                }
            };
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let mut watch = H2Watch::new(stream, deadline, header_timeout);
            match tokio::time::timeout_at(deadline, watch.read_preface()).await {
                Ok(Ok(true)) => stream = Box::new(watch),
                Ok(Ok(false)) | Ok(Err(_)) => {
                    tracing::debug!("client left or is not HTTP/2 after negotiating h2");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("HTTP/2 connection preface not in within header_timeout");
                    return None;
                }
            }
        }
        // pingora's HTTP app keeps an HTTP/1 connection's keep-alive loop to
        // itself and returns nothing; were it to hand a stream back, it is
        // already past TLS, so it goes back to the app, not through step 1.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// pingora's server-side TLS handshake on an accepted TCP stream, as its TLS
/// listener does it (`listeners/mod.rs`, `UninitializedStream::handshake`).
async fn tls_accept(acceptor: &Acceptor, stream: Stream) -> Result<Stream, String> {
    let l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| "the accepted connection is not a TCP stream".to_string())?;
    let tls = acceptor
        .tls_handshake(*l4)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(tls))
}

/// Bounds each read of a new connection's first request head (pingora's own
/// default is 60 s and cannot be configured); the webhook body has its own
/// whole-body deadline and keep-alive waits use `idle_timeout`. A thin wrapper
/// around pingora's proxy app, since pingora has no hook before the head is read.
/// HTTP/2 heads are bounded under the codec instead (see [`ClientConnection`]).
struct HeaderTimeout<A> {
    inner: Arc<A>,
    /// For `header_timeout`, read per connection so a reload applies to it.
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl<A> HttpServerApp for HeaderTimeout<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A reused keep-alive connection carries the marker the proxy persisted
        // (`Guard::persist_connection_context`): its wait is `idle_timeout`.
        let reused = session.take_connection_user_context().is_some();
        if !reused {
            let timeout = self.shared.config.load().header_timeout;
            session.set_read_timeout(Some(timeout));
            // pingora applies its keep-alive wait (60 s) to each read of the
            // head, so that is the bound to tighten.
            if session.get_keepalive().is_some() {
                session.set_keepalive(Some(timeout.as_secs().max(1)));
            }
        }
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// SIGTERM: pingora closes the listeners and waits out `grace_period`; this
/// watcher also exits as soon as no request is in flight, so a drained proxy
/// does not sit idle for the whole grace period. SIGINT stops at once.
struct Drain {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: no new connections; draining in-flight requests");
                self.shared.draining.store(true, Ordering::SeqCst);
                let shared = self.shared.clone();
                std::thread::spawn(move || {
                    // Let pingora close the listeners first.
                    std::thread::sleep(Duration::from_millis(200));
                    while shared.inflight.load(Ordering::SeqCst) > 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    tracing::info!("drained: exiting");
                    std::process::exit(0);
                });
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Re-reads the route file and every secret on SIGHUP. An invalid file leaves
/// the running configuration in place; the replay memory is never touched.
fn spawn_reloader(
    path: PathBuf,
    shared: Arc<Shared>,
    cert: Option<Arc<ReloadableCert>>,
    h2_idle_timeout: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the reload thread: {e}; SIGHUP will not reload");
            return;
        }
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
    let current = shared.config.load_full();
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
            for r in &new.routes {
                shared.metrics.register_route(&r.path);
            }
            let routes: Vec<&str> = new.routes.iter().map(|r| r.path.as_str()).collect();
            tracing::info!(?routes, "configuration reloaded");
            shared.budget.set_limit(new.max_buffered);
            shared.config.store(Arc::new(Config {
                listen: current.listen,
                listen_tls: current.listen_tls.clone(),
                admin: current.admin,
                upstream_ca_file: current.upstream_ca_file.clone(),
                threads: current.threads,
                ..new
            }));
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
        }
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            shared.metrics.reloads.with_label_values(&["error"]).inc();
        }
    }
}
