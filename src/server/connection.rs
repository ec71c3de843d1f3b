//! The public listener's connections: TLS and the HTTP/2 preface within
//! `header_timeout` ([`ClientConnection`]), and the HTTP/1 head bound
//! ([`HeaderTimeout`]), around pingora's proxy app.

use std::sync::Arc;

use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;

use crate::h2_watch::H2Watch;
use crate::state::Shared;

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
/// (`HttpServerOptions::h2_idle_timeout`, set from `idle_timeout` in [`super::run`]).
/// For HTTP/1 only step 1 is new: [`HeaderTimeout`] bounds each read of its
/// heads, as before.
pub struct ClientConnection<A> {
    pub inner: Arc<A>,
    /// pingora's TLS acceptor for the listener; `None`: plain TCP.
    pub tls: Option<Acceptor>,
    pub shared: Arc<Shared>,
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
        let header_timeout = self.shared.policy.load().config.header_timeout;
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
pub struct HeaderTimeout<A> {
    pub inner: Arc<A>,
    /// For `header_timeout`, read per connection so a reload applies to it.
    pub shared: Arc<Shared>,
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
            let timeout = self.shared.policy.load().config.header_timeout;
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
