//! The app's side: persona-guard's own HTTP/1.1 client for verified
//! deliveries, small passthrough requests and redeliveries from the spool, on
//! pingora's connector and pool. Below both `proxy` and `redelivery`.
//!
//! The request is written straight from the client's head (header names in
//! their case, no second header map), head and body in one write up to
//! [`COALESCE_LIMIT`]; interim answers are kept and passed on; the response is
//! streamed back and never completed when the app's body ends early.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::{HeaderName, StatusCode};
use pingora::connectors::http::v1::Connector;
use pingora::http::{HeaderNameVariant, RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::{HostHeader, Upstream};
use crate::outcome::Outcome;

mod target;
pub use target::{COALESCE_LIMIT, TargetForm, target_form};

/// How long an idle upstream connection stays in the pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Headers that describe one hop and are never forwarded as they are.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// Interim (1xx) answers passed on before the final one (RFC 9110 §15.2);
/// an app that sends more is treated as broken (502).
const MAX_INTERIM: usize = 8;

/// The upstream peer of an `[upstream]` block: timeouts, TLS and pool idle time.
pub fn peer_for(up: &Upstream) -> HttpPeer {
    let mut peer = HttpPeer::new(up.address, up.tls, up.sni.clone());
    peer.options.verify_cert = up.verify;
    peer.options.verify_hostname = up.verify;
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.total_connection_timeout = Some(up.connect_timeout);
    peer.options.read_timeout = Some(up.read_timeout);
    peer.options.write_timeout = Some(up.read_timeout);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE);
    peer
}

/// Why forwarding failed before a response head arrived.
#[derive(Clone, Copy)]
pub enum ForwardError {
    Unavailable,
    Timeout,
}

impl From<ForwardError> for Outcome {
    fn from(e: ForwardError) -> Outcome {
        match e {
            ForwardError::Unavailable => Outcome::UpstreamUnavailable,
            ForwardError::Timeout => Outcome::UpstreamTimeout,
        }
    }
}

fn classify(e: &Error) -> ForwardError {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => ForwardError::Timeout,
        _ => ForwardError::Unavailable,
    }
}

/// The app's answer head, with the connection its body comes on.
pub struct Answer {
    up: UpstreamSession,
    /// Interim (1xx) heads that came before the final one.
    interim: Vec<ResponseHeader>,
    pub head: ResponseHeader,
}

/// Sends the request and reads the app's answer head.
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    wire: &Wire<'_>,
) -> Result<Answer, ForwardError> {
    let mut interim = Vec::new();
    let up = send(connector, peer, wire, &mut interim).await?;
    let head = up
        .response_header()
        .cloned()
        .ok_or(ForwardError::Unavailable)?;
    Ok(Answer { up, interim, head })
}

/// Sends the request and reads the response head. A pooled connection that
/// turns out dead before any response byte is retried once on a new one.
async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    wire: &Wire<'_>,
    interim: &mut Vec<ResponseHeader>,
) -> Result<UpstreamSession, ForwardError> {
    for attempt in 0..2 {
        // A pooled connection is the common case and a small future; a new
        // connection (TCP, maybe TLS) is a large one, boxed so that every
        // request's future does not carry (and copy) its size.
        let (h1, reused) = match connector.reused_http_session(peer).await {
            Some(h1) => (h1, true),
            None => match Box::pin(connector.get_http_session(peer)).await {
                Ok(s) => s,
                Err(e) => return Err(classify(&e)),
            },
        };
        let result = exchange_h1(h1, wire, peer, interim)
            .await
            .map(UpstreamSession::H1);
        match result {
            Ok(up) => return Ok(up),
            Err(e) => {
                let timeout = matches!(classify(&e), ForwardError::Timeout);
                if reused && attempt == 0 && !timeout && interim.is_empty() {
                    tracing::debug!("pooled upstream connection failed; retrying on a new one");
                    continue;
                }
                return Err(classify(&e));
            }
        }
    }
    Err(ForwardError::Unavailable)
}

impl Answer {
    /// Reads the answer's body and drops it (a redelivery from the spool
    /// has no client to relay to), then returns the connection to the pool.
    /// A body longer than `DISCARD_LIMIT` or cut short ends the connection
    /// instead: nobody waits on it, and a pooled connection must be clean.
    pub async fn discard(self, connector: &Connector, peer: &HttpPeer) {
        const DISCARD_LIMIT: usize = 64 * 1024;
        let Answer { mut up, .. } = self;
        let mut read = 0;
        while !up.response_done() {
            match up.read_response_body().await {
                Ok(Some(chunk)) if read + chunk.len() <= DISCARD_LIMIT => read += chunk.len(),
                Ok(None) => break,
                _ => {
                    up.shutdown().await;
                    return;
                }
            }
        }
        if up.response_done()
            && let UpstreamSession::H1(h1) = up
        {
            connector
                .release_http_session(h1, peer, Some(UPSTREAM_IDLE))
                .await;
        }
    }

    /// Streams the answer to the client and returns the connection to the
    /// pool. An error means the answer could not be relayed whole (the app's
    /// body ended early, or the client went away): the caller returns it, so
    /// that pingora ends the client's connection (HTTP/1) or resets the
    /// stream (HTTP/2) instead of completing a truncated body.
    pub async fn relay(
        self,
        connector: &Connector,
        session: &mut Session,
        peer: &HttpPeer,
    ) -> pingora::Result<()> {
        let Answer {
            mut up,
            interim,
            head,
        } = self;
        // Interim (1xx) heads first, then the final one; each in the proxy's
        // own HTTP version, whatever the app's status line said.
        let done = up.response_done();
        let heads = interim.into_iter().map(|h| (h, false));
        for (mut h, end) in heads.chain(std::iter::once((head, done))) {
            strip_response_hop_by_hop(&mut h);
            h.set_version(http::Version::HTTP_11);
            if let Err(e) = session.write_response_header(Box::new(h), end).await {
                up.shutdown().await;
                return Err(e);
            }
        }
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = session.write_response_body(Some(chunk), false).await {
                        up.shutdown().await;
                        return Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    up.shutdown().await;
                    return Err(e.into_up());
                }
            }
        }
        if let Err(e) = session.write_response_body(None, true).await {
            session.set_keepalive(None);
            return Err(e);
        }
        if up.response_done()
            && let UpstreamSession::H1(h1) = up
        {
            connector
                .release_http_session(h1, peer, Some(UPSTREAM_IDLE))
                .await;
        }
        Ok(())
    }
}

/// A request as the HTTP/1.1 app gets it, ready to write: the head, written
/// straight from the client's head (header names in the client's case, no
/// second header map built), with the body appended when it fits in one write.
pub struct Wire<'a> {
    /// The head, followed by the body when `rest` is empty.
    first: BytesMut,
    /// The body when it is written after the head (over [`COALESCE_LIMIT`]).
    rest: &'a [u8],
    /// The head's length in `first`.
    head_len: usize,
}

impl<'a> Wire<'a> {
    /// Hop-by-hop headers and the client's `Content-Length` are left out; the
    /// target is in origin form; `Host` follows the upstream's `host_header`
    /// (an HTTP/2 client's `:authority` becomes `Host`); then `extra`, and
    /// `Content-Length` when given. A `traceparent` in `extra` replaces the
    /// client's `traceparent` and `tracestate`.
    pub fn new(
        client: &RequestHeader,
        up: &Upstream,
        extra: &[(&HeaderName, &str)],
        content_length: Option<usize>,
        body: &'a [u8],
    ) -> pingora::Result<Wire<'a>> {
        use std::fmt::Write;
        let uri = &client.uri;
        let (target, absolute_authority) = match target_form(client) {
            Some(TargetForm::Absolute { authority, origin }) => (origin, Some(authority)),
            _ if uri.scheme().is_some() || uri.authority().is_some() => (
                Cow::Borrowed(
                    uri.path_and_query()
                        .map_or(b"/".as_slice(), |p| p.as_str().as_bytes()),
                ),
                None,
            ),
            _ => (Cow::Borrowed(client.raw_path()), None),
        };
        if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "request target",
            ));
        }
        let coalesce = body.len() <= COALESCE_LIMIT;
        let mut first = BytesMut::with_capacity(512 + if coalesce { body.len() } else { 0 });
        first.put_slice(client.method.as_str().as_bytes());
        first.put_u8(b' ');
        first.put_slice(&target);
        first.put_slice(b" HTTP/1.1\r\n");
        let own_host = up.host_header == HostHeader::Upstream;
        let replace_host = own_host || absolute_authority.is_some();
        let mut has_host = false;
        // A `traceparent` in `extra` (tracing on) replaces the client's trace
        // context: its `traceparent` and `tracestate` are not forwarded.
        let own_trace = extra.iter().any(|(n, _)| *n == "traceparent");
        client.map(|name, value| {
            let name = match name {
                HeaderNameVariant::Case(c) => c.as_slice(),
                HeaderNameVariant::Titled(t) => t.as_bytes(),
            };
            let is = |other: &str| name.eq_ignore_ascii_case(other.as_bytes());
            has_host |= is("host");
            if !(HOP_BY_HOP.iter().any(|h| is(h))
                || is("content-length")
                || replace_host && is("host")
                || own_trace && (is("traceparent") || is("tracestate")))
            {
                put_header(&mut first, name, value.as_bytes());
            }
            Ok(())
        })?;
        if own_host {
            put_header(&mut first, b"Host", up.authority.as_bytes());
        } else if let Some(a) = absolute_authority {
            put_header(&mut first, b"Host", a);
        } else if let (false, Some(a)) = (has_host, uri.authority()) {
            put_header(&mut first, b"Host", a.as_str().as_bytes());
        }
        for (name, value) in extra {
            put_header(&mut first, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(n) = content_length {
            let _ = write!(first, "Content-Length: {n}\r\n");
        }
        first.put_slice(b"\r\n");
        Ok(Wire::join(first, body))
    }

    /// A request whose head was written before (a spooled delivery: see
    /// [`Wire::head`]), sent again byte for byte.
    pub fn from_parts(head: &[u8], body: &'a [u8]) -> Wire<'a> {
        let coalesce = body.len() <= COALESCE_LIMIT;
        let mut first = BytesMut::with_capacity(head.len() + if coalesce { body.len() } else { 0 });
        first.put_slice(head);
        Wire::join(first, body)
    }

    fn join(mut first: BytesMut, body: &'a [u8]) -> Wire<'a> {
        let head_len = first.len();
        if body.len() <= COALESCE_LIMIT {
            first.put_slice(body);
            return Wire {
                first,
                rest: &[],
                head_len,
            };
        }
        Wire {
            first,
            rest: body,
            head_len,
        }
    }

    /// The head as written: request line, headers, the blank line.
    pub fn head(&self) -> &[u8] {
        &self.first[..self.head_len]
    }
}

fn put_header(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_slice(b"\r\n");
}

/// HTTP/1.1: writes the request (head and, up to [`COALESCE_LIMIT`], body in
/// one write: one segment on the wire for a typical request, where pingora's
/// client writes head and body separately), then reads the response head,
/// keeping interim ones. The connection goes back to the pool as usual.
async fn exchange_h1(
    h1: Http1Session,
    wire: &Wire<'_>,
    peer: &HttpPeer,
    interim: &mut Vec<ResponseHeader>,
) -> pingora::Result<Http1Session> {
    use tokio::io::AsyncWriteExt;
    let mut stream = h1.into_inner();
    let write = async {
        stream.write_all(&wire.first).await?;
        if !wire.rest.is_empty() {
            stream.write_all(wire.rest).await?;
        }
        stream.flush().await
    };
    let written = match peer.options.write_timeout {
        Some(t) => tokio::time::timeout(t, write)
            .await
            .map_err(|_| Error::explain(ErrorType::WriteTimedout, "writing the request"))?,
        None => write.await,
    };
    written.map_err(|e| Error::because(ErrorType::WriteError, "writing the request", e))?;
    let mut h1 = Http1Session::new_with_options(stream, peer);
    // The heads are read under the one timer below, not also under
    // pingora's per-read timer (a second timer set and cleared for every
    // answer); the body's reads get `read_timeout` back after them.
    h1.read_timeout = None;
    h1.write_timeout = peer.options.write_timeout;
    // The final head must come within one read_timeout however many interim
    // answers come first, and after at most MAX_INTERIM of them: an app that
    // sends `103` every second must not keep a delivery (and its in-flight
    // mark) alive forever.
    let heads = async {
        loop {
            h1.read_response().await?;
            match h1.resp_header() {
                Some(h) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "101 Switching Protocols to a request that asked for no upgrade",
                    );
                }
                Some(h) if h.status.is_informational() => {
                    if interim.len() == MAX_INTERIM {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "too many interim answers",
                        );
                    }
                    interim.push(h.clone());
                }
                _ => return Ok(()),
            }
        }
    };
    match peer.options.read_timeout {
        Some(t) => tokio::time::timeout(t, heads).await.map_err(|_| {
            Error::explain(ErrorType::ReadTimedout, "waiting for the final answer")
        })??,
        None => heads.await?,
    }
    h1.read_timeout = peer.options.read_timeout;
    Ok(h1)
}

/// Removes the headers that describe the app's connection, not the answer.
fn strip_response_hop_by_hop(head: &mut ResponseHeader) {
    for name in ["connection", "keep-alive", "proxy-connection", "upgrade"] {
        head.remove_header(name);
    }
}

#[cfg(test)]
mod tests;
