//! The public listener's connections: the connection limits, TLS and the
//! HTTP/2 preface within `header_timeout`, and the whole-head deadline on
//! HTTP/1 ([`ClientConnection`]), around pingora's proxy app.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use tokio::time::Instant;

use super::limits::{Connections, Limits};
use crate::h2_watch::H2Watch;
use crate::head_watch::{HeadClock, HeadMark, HeadWatch, within_head_deadline};
use crate::state::Shared;

/// The public listener's connection-level app: admits a new connection under
/// the connection limits, puts `header_timeout` on everything it does before
/// its first request head, HTTP/2 included, and on every HTTP/1 head, and
/// runs pingora's HTTP app on it.
///
/// Why a wrapper: in pingora 0.9.1 none of this can be configured. The
/// listener has no connection limit; its TLS handshake has a fixed 60 s bound
/// (`services/listening.rs`, `run_endpoint`); the HTTP/2 handshake and stream
/// accept loop have none (`apps/mod.rs`, the `ServerApp` impl for every
/// `HttpServerApp`, and `protocols/http/v2/server.rs`, `handshake` and
/// `accept_downstream_sessions`), and an HTTP/1 head is bounded per read only
/// (`protocols/http/v1/server.rs`, `read_request`). So the listener is plain
/// TCP and this app, which pingora gives each accepted connection first:
///
/// 1. takes a place under `max_connections` and `max_connections_per_peer`
///    ([`Connections`]), or drops the connection at once (see `limits`);
/// 2. runs the TLS handshake with pingora's own acceptor (the same
///    `TlsSettings`, certificate resolver and ALPN as a TLS listener), within
///    `header_timeout` of the accept;
/// 3. on `h2`, waits, by the same deadline, for the client's connection preface
///    and first frame (SETTINGS), wraps the stream in an [`H2Watch`], which
///    keeps the connection's first request head due by that deadline and each
///    later header block due within `header_timeout` of its start, and hands it
///    to pingora's HTTP/2 loop;
/// 4. otherwise runs the HTTP/1 keep-alive loop (pingora's own, with a
///    [`HeadClock`]): the first head is due by the same deadline, each later
///    one within `header_timeout` of its first byte (see `head_watch`).
///
/// The idle bound between HTTP/2 requests is pingora's own
/// (`HttpServerOptions::h2_idle_timeout`, set from `idle_timeout` in [`super::run`]);
/// between HTTP/1 requests it is the keep-alive wait the proxy sets.
pub struct ClientConnection<A> {
    pub inner: Arc<A>,
    /// pingora's TLS acceptor for the listener; `None`: plain TCP.
    pub tls: Option<Acceptor>,
    pub shared: Arc<Shared>,
    pub connections: Arc<Connections>,
}

#[async_trait::async_trait]
impl<A> ServerApp for ClientConnection<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let start = Instant::now();
        let (header_timeout, limits, peer) = {
            let policy = self.shared.policy.load();
            let c = &policy.config;
            let limits = Limits {
                total: c.policy.max_connections,
                per_peer: c.policy.max_connections_per_peer,
            };
            // A trusted proxy counts toward the total only.
            let peer = peer_ip(&stream).filter(|ip| !c.policy.trusted_proxies.contains(*ip));
            (c.policy.header_timeout, limits, peer)
        };
        // Held until this task ends: the connection is closed by then.
        let _slot = match self.connections.admit(peer, limits) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(reason = why.reason(), "client connection refused");
                return None;
            }
        };
        let deadline = start + header_timeout;
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
        if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            self.http1(stream, deadline, header_timeout, shutdown).await;
            return None;
        }
        let mut watch = H2Watch::new(stream, deadline, header_timeout);
        match tokio::time::timeout_at(deadline, watch.read_preface()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) => {
                tracing::debug!("client left or is not HTTP/2 after negotiating h2");
                return None;
            }
            Err(_) => {
                tracing::debug!("HTTP/2 connection preface not in within header_timeout");
                return None;
            }
        }
        // pingora's HTTP/2 loop returns nothing to reuse.
        ServerApp::process_new(&self.inner, Box::new(watch), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A> ClientConnection<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// pingora's HTTP/1 keep-alive loop (`apps/mod.rs`, the `ServerApp` impl
    /// for every `HttpServerApp`), with each head under a [`HeadClock`]: the
    /// first due at `deadline`, each later one `header_timeout` after its
    /// first byte. The wait for that byte is the keep-alive wait the proxy
    /// sets (`idle_timeout`).
    async fn http1(
        self: &Arc<Self>,
        stream: Stream,
        deadline: Instant,
        header_timeout: Duration,
        shutdown: &ShutdownWatch,
    ) {
        let clock = HeadClock::new(Instant::now(), header_timeout);
        let mut session = ServerSession::new_http1(Box::new(HeadWatch::new(stream, clock.clone())));
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            // pingora applies its keep-alive wait to each read of the head;
            // the clock bounds the whole head within it.
            session.set_keepalive(Some(whole_seconds(header_timeout)));
        }
        session.set_read_timeout(Some(header_timeout));
        let reuses = self
            .inner
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        session.set_keepalive_reuses_remaining(reuses);
        let mut due = Some(deadline);
        loop {
            clock.await_head(due.take());
            session.set_connection_user_context(Some(Box::new(HeadMark(clock.clone()))));
            let request = self.inner.process_new_http(session, shutdown);
            let Some(reused) = within_head_deadline(&clock, request).await else {
                return;
            };
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

/// `d` in whole seconds, rounded up, at least 1 (pingora's keep-alive unit).
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The TCP peer's IP address, if the stream has one.
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let inet = digest.peer_addr()?.as_inet()?;
    Some(inet.ip())
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
