//! The pingora phases: where every request is judged.
//!
//! Everything happens in `request_filter`, the only phase that runs before
//! pingora picks and connects an upstream:
//!
//! 1. framing (raw HTTP/1 head) and the trusted-header strip, on every path;
//! 2. path normalisation and route lookup;
//! 3. on a webhook route: method, signature header, body size, the whole body
//!    (bounded in size and time), signature and timestamp, event, allow-list,
//!    replay claim; then the delivery is forwarded **by this module** through
//!    pingora's connector and pool, the response streamed back, and the claim
//!    settled (delivered on 2xx, released otherwise).
//!
//! Forwarding a verified delivery here, instead of handing it back to pingora,
//! is deliberate: pingora can only re-send a body read in `request_filter`
//! through its retry buffer, which holds 64 KiB and silently sends *no body*
//! above that. Here the body is one `Bytes` of any size up to `max_body`.
//!
//! Paths under no route: a small HTTP/1.1 request (no body or a
//! `Content-Length` body up to 64 KiB, no upgrade or `Expect`, not `HEAD` or
//! `CONNECT`) is forwarded the same way, in one write; on loopback that halves
//! the writes per request against pingora's streaming path. Everything else
//! returns `Ok(false)` and pingora proxies it as usual; `fail_to_proxy` turns
//! its upstream errors into the JSON 502/504 answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER};
use http::{HeaderName, Method, StatusCode};
use pingora::connectors::http::v1::Connector;
use pingora::http::{HeaderNameVariant, RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::budget::BodyBudget;
use crate::config::{self, Config, OnStoreError, Route, TrustedHeaders, Unmatched, Upstream};
use crate::event;
use crate::framing;
use crate::metrics::{self, Metrics};
use crate::outcome::Outcome;
use crate::replay::{self, Claim, ReplayStore};
use crate::signature::{self, Verdict};

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

/// Bodies up to this size are sent in the same write as the request head.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Per-read bound on request bodies (pingora's default).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// `Retry-After` seconds on a 503 `overloaded`: bodies come and go within
/// about a request's time.
const OVERLOADED_RETRY: u64 = 1;

/// How long an idle upstream connection stays in the pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// What lives for the whole process, across configuration reloads.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub store: Arc<dyn ReplayStore>,
    pub metrics: Metrics,
    /// Webhook body bytes held at once (`[server] max_buffered`).
    pub budget: Arc<BodyBudget>,
    connector: Connector,
    /// Requests being handled now (for the SIGTERM drain).
    pub inflight: AtomicUsize,
    /// Set on SIGTERM: readiness turns 503.
    pub draining: AtomicBool,
}

impl Shared {
    pub fn new(
        config: Config,
        store: Arc<dyn ReplayStore>,
        metrics: Metrics,
        connector: Connector,
    ) -> Self {
        for r in &config.routes {
            metrics.register_route(&r.path);
        }
        metrics.register_no_route();
        Shared {
            budget: BodyBudget::new(config.max_buffered),
            config: ArcSwap::from_pointee(config),
            store,
            metrics,
            connector,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }
}

/// Counts a request as in flight for as long as it lives.
struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(shared.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The proxy application.
pub struct Guard {
    pub shared: Arc<Shared>,
}

impl Shared {
    fn store_error(&self, op: &'static str, e: &crate::replay::StoreError) {
        self.metrics
            .replay_store_errors
            .with_label_values(&[op])
            .inc();
        tracing::warn!(op, error = %e, "replay store error");
    }
}

/// Carried from one request to the next on a keep-alive connection.
struct ReusedConnection;

/// Per-request state.
pub struct Ctx {
    _inflight: InflightGuard,
    started: Instant,
    config: Option<Arc<Config>>,
    route: Option<usize>,
    outcome: Option<Outcome>,
    /// The status sent to the client.
    status: Option<u16>,
    upstream_status: Option<u16>,
    event_id: Option<String>,
    event_type: Option<String>,
}

/// Why forwarding failed before a response head arrived.
enum ForwardError {
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Removes every client-sent copy of the trusted headers: any case, `_` or `-`.
fn strip_trusted(req: &mut RequestHeader, names: &TrustedHeaders) {
    let targets = names.names();
    // Header names arrive lower-cased; compare with `_` read as `-`, no allocation
    // on the common path where nothing matches.
    let same = |k: &HeaderName, t: &HeaderName| {
        let (k, t) = (k.as_str().as_bytes(), t.as_str().as_bytes());
        k.len() == t.len()
            && k.iter()
                .zip(t)
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| targets.iter().any(|t| same(k, t)))
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
}

fn peer_for(up: &Upstream) -> HttpPeer {
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

fn classify(e: &Error) -> ForwardError {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => ForwardError::Timeout,
        _ => ForwardError::Unavailable,
    }
}

/// Writes a JSON answer of persona-guard's own. `keepalive = false` closes the
/// connection afterwards (used whenever the request body was not read).
async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    outcome: Outcome,
    keepalive: bool,
    retry_after: Option<u64>,
) -> pingora::Result<bool> {
    ctx.outcome = Some(outcome);
    let status = outcome.status().unwrap_or(StatusCode::OK);
    ctx.status = Some(status.as_u16());
    let body = Bytes::from(outcome.body());
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "application/json")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    if let Some(secs) = retry_after {
        resp.insert_header(RETRY_AFTER, secs.to_string())?;
    }
    if !keepalive {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// Reads the whole request body within `max_body` bytes and, when given, the
/// `deadline` (each read is also bounded by the session's read timeout). A body
/// that arrives in one piece, the usual case, is returned without a copy.
async fn read_body(
    session: &mut Session,
    max_body: u64,
    deadline: Option<tokio::time::Instant>,
) -> Result<Bytes, Outcome> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        let read = session.read_request_body();
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, read)
                .await
                .map_err(|_| Outcome::BodyTimeout)?,
            None => read.await,
        };
        let chunk = match next {
            Err(e) if bad_body_framing(&e) => return Err(Outcome::MalformedRequest),
            Err(_) => return Err(Outcome::ClientError),
            Ok(None) => break,
            Ok(Some(c)) => c,
        };
        let held = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if (held + chunk.len()) as u64 > max_body {
            return Err(Outcome::BodyTooLarge);
        }
        if first.is_none() && rest.is_empty() {
            first = Some(chunk);
            continue;
        }
        if let Some(f) = first.take() {
            // One allocation of the declared size (already within max_body),
            // not a doubling buffer that can hold twice the body.
            let declared = declared_length(session.req_header()).unwrap_or(0) as usize;
            rest.reserve(declared.max(f.len() + chunk.len()));
            rest.extend_from_slice(&f);
        }
        rest.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// A request body whose chunked framing is broken (a bad chunk size, data
/// longer than its size, a bad line end): the client gets 400, not a cut.
fn bad_body_framing(e: &Error) -> bool {
    matches!(e.etype().as_str(), "InvalidChunk" | "InvalidTrailerEnd")
}

/// Ends a request whose body could not be read: a client that went away gets
/// nothing more; a body too large or too slow gets its answer. Either way the
/// connection closes, since the rest of the body is unread.
async fn body_refused(
    session: &mut Session,
    ctx: &mut Ctx,
    outcome: Outcome,
) -> pingora::Result<bool> {
    if outcome == Outcome::ClientError {
        ctx.outcome = Some(Outcome::ClientError);
        session.set_keepalive(None);
        return Ok(true);
    }
    respond(session, ctx, outcome, false, None).await
}

impl Guard {
    /// Judges and, if genuine, forwards a request on a webhook route.
    async fn webhook(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        cfg: &Config,
        route: &Route,
    ) -> pingora::Result<bool> {
        // 1. method (the body is not read: close the connection after answering).
        if session.req_header().method != Method::POST {
            return respond(session, ctx, Outcome::MethodNotAllowed, false, None).await;
        }
        // 2. the signature header's presence and form, before any body byte.
        let mut values = session
            .req_header()
            .headers
            .get_all("persona-signature")
            .iter();
        let parsed = match (values.next(), values.next()) {
            (None, _) => {
                return respond(session, ctx, Outcome::MissingSignature, false, None).await;
            }
            (Some(_), Some(_)) => {
                return respond(session, ctx, Outcome::MalformedSignature, false, None).await;
            }
            (Some(v), None) => match signature::parse(v.as_bytes()) {
                Ok(p) => p,
                Err(_) => {
                    return respond(session, ctx, Outcome::MalformedSignature, false, None).await;
                }
            },
        };
        // 3. body size: a declared length over the limit is refused unread.
        if declared_length(session.req_header()).is_some_and(|n| n > route.max_body) {
            return respond(session, ctx, Outcome::BodyTooLarge, false, None).await;
        }
        // The memory budget: the body's size is reserved before any byte of it
        // is read (the declared length, or max_body for a chunked body), and
        // given back when this request ends.
        let need = declared_length(session.req_header()).unwrap_or(route.max_body);
        let Some(_permit) = self.shared.budget.reserve(need) else {
            return respond(
                session,
                ctx,
                Outcome::Overloaded,
                false,
                Some(OVERLOADED_RETRY),
            )
            .await;
        };
        if session.req_header().headers.contains_key(EXPECT) {
            session.write_continue_response().await?;
            session.req_header_mut().remove_header(&EXPECT);
        }
        let deadline = tokio::time::Instant::now() + cfg.body_timeout;
        let body = match read_body(session, route.max_body, Some(deadline)).await {
            Ok(b) => b,
            Err(o) => return body_refused(session, ctx, o).await,
        };

        // 4. signature and timestamp.
        let started = Instant::now();
        let verdict = signature::verify(
            &parsed,
            &route.secrets,
            &body,
            unix_now(),
            route.tolerance.as_secs() as i64,
        );
        self.shared
            .metrics
            .verify_duration
            .with_label_values(&[&route.path])
            .observe(started.elapsed().as_secs_f64());
        match verdict {
            Verdict::Invalid => {
                return respond(session, ctx, Outcome::InvalidSignature, true, None).await;
            }
            Verdict::Stale => {
                return respond(session, ctx, Outcome::TimestampOutOfTolerance, true, None).await;
            }
            Verdict::Valid { secret_index } => {
                self.shared
                    .metrics
                    .secret_matches
                    .with_label_values(&[route.path.as_str(), &metrics::index_label(secret_index)])
                    .inc();
            }
        }

        // 5. the event.
        let ev = match event::parse(&body) {
            Ok(ev) => ev,
            Err(_) => return respond(session, ctx, Outcome::InvalidEvent, true, None).await,
        };
        ctx.event_id = Some(ev.id.to_string());
        ctx.event_type = Some(ev.name.to_string());

        // 6. the allow-list (an ignored event is not remembered).
        if !route.allows(&ev.name) {
            return respond(session, ctx, Outcome::Ignored, true, None).await;
        }

        // 7. the replay store.
        let claimed = replay::claim(
            &self.shared.store,
            &route.normalized,
            &ev.id,
            cfg.replay.inflight_ttl,
        )
        .await;
        let claim = match claimed {
            Ok(Claim::Claimed(lease)) => {
                self.shared.metrics.replay_insertions.inc();
                let shared = self.shared.clone();
                Some(lease.on_error(move |op, e| shared.store_error(op, e)))
            }
            Err(e) => {
                self.shared.store_error("claim", &e);
                match cfg.replay.on_store_error {
                    OnStoreError::Reject => {
                        return respond(session, ctx, Outcome::ReplayStoreUnavailable, true, None)
                            .await;
                    }
                    OnStoreError::Allow => {
                        tracing::warn!(
                            route = route.path.as_str(),
                            event_id = ev.id.as_ref(),
                            "replay store unavailable: forwarding WITHOUT replay protection (on_store_error = \"allow\")"
                        );
                        self.shared.metrics.replay_fail_open.inc();
                        None
                    }
                }
            }
            Ok(Claim::Duplicate) => {
                return respond(session, ctx, Outcome::Duplicate, true, None).await;
            }
            Ok(Claim::InFlight { retry_after }) => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                return respond(
                    session,
                    ctx,
                    Outcome::DeliveryInProgress,
                    true,
                    Some(secs.max(1)),
                )
                .await;
            }
        };

        // 8. forward.
        let h = &cfg.headers;
        let mut trusted = vec![
            (&h.event_type, ev.name.as_ref()),
            (&h.event_id, ev.id.as_ref()),
        ];
        if let Some(c) = &ev.created_at {
            trusted.push((&h.event_created_at, c.as_ref()));
        }
        let wire = Wire::new(
            session.req_header(),
            &route.upstream,
            &trusted,
            Some(body.len()),
            &body,
        )?;
        let peer = peer_for(&route.upstream);
        let sent = Instant::now();
        let mut interim = Vec::new();
        let upstream = match self.send(&peer, &wire, &mut interim).await {
            Ok(u) => u,
            Err(e) => {
                if let Some(c) = claim {
                    c.release().await;
                }
                return respond(session, ctx, e.into(), true, None).await;
            }
        };
        let Some(head) = upstream.response_header().cloned() else {
            if let Some(c) = claim {
                c.release().await;
            }
            return respond(session, ctx, Outcome::UpstreamUnavailable, true, None).await;
        };
        let status = head.status.as_u16();
        self.shared
            .metrics
            .upstream_duration
            .with_label_values(&[&route.path, metrics::status_class(status)])
            .observe(sent.elapsed().as_secs_f64());
        // The application has answered: settle the claim before anything can fail.
        if let Some(c) = claim {
            if head.status.is_success() {
                c.commit(cfg.replay.ttl).await;
            } else {
                c.release().await;
            }
        }
        ctx.outcome = Some(Outcome::Forwarded);
        ctx.upstream_status = Some(status);
        ctx.status = Some(status);
        self.relay_response(session, upstream, interim, head, &peer)
            .await?;
        Ok(true)
    }

    /// Forwards a small HTTP/1.1 passthrough request the way a delivery is
    /// forwarded: the body (if any) read whole, head and body in one write, the
    /// response streamed back. On loopback this halves the writes per request
    /// against pingora's streaming path (head, body pieces and response each
    /// in their own write). Returns `Ok(false)`, leaving the request to
    /// pingora's streaming proxy, for everything else: HTTP/2 clients, other
    /// HTTP versions, `HEAD`/`CONNECT`, upgrades, `Expect`, chunked bodies and
    /// bodies over [`COALESCE_LIMIT`].
    async fn passthrough(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        cfg: &Config,
    ) -> pingora::Result<bool> {
        if !small_h1_request(session) {
            return Ok(false);
        }
        // Each read is bounded by the session's read timeout, as on pingora's path.
        let body = match read_body(session, COALESCE_LIMIT as u64, None).await {
            Ok(b) => b,
            Err(o) => return body_refused(session, ctx, o).await,
        };
        let client = session.req_header();
        let declared = client.headers.contains_key(CONTENT_LENGTH);
        let wire = Wire::new(
            client,
            &cfg.upstream,
            &[],
            declared.then_some(body.len()),
            &body,
        )?;
        let peer = peer_for(&cfg.upstream);
        let mut interim = Vec::new();
        let upstream = match self.send(&peer, &wire, &mut interim).await {
            Ok(u) => u,
            Err(e) => return respond(session, ctx, e.into(), true, None).await,
        };
        let Some(head) = upstream.response_header().cloned() else {
            return respond(session, ctx, Outcome::UpstreamUnavailable, true, None).await;
        };
        ctx.outcome = Some(Outcome::Passthrough);
        ctx.upstream_status = Some(head.status.as_u16());
        ctx.status = ctx.upstream_status;
        self.relay_response(session, upstream, interim, head, &peer)
            .await?;
        Ok(true)
    }

    /// Sends the request and reads the response head. A pooled connection that
    /// turns out dead before any response byte is retried once on a new one.
    async fn send(
        &self,
        peer: &HttpPeer,
        wire: &Wire<'_>,
        interim: &mut Vec<ResponseHeader>,
    ) -> Result<UpstreamSession, ForwardError> {
        for attempt in 0..2 {
            let connector = &self.shared.connector;
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

    /// Streams the upstream response to the client and returns the connection
    /// to the pool. An error means the response could not be relayed whole
    /// (the app's body ended early, or the client went away): the caller
    /// returns it, so that pingora ends the client's connection (HTTP/1) or
    /// resets the stream (HTTP/2) instead of completing a truncated body.
    async fn relay_response(
        &self,
        session: &mut Session,
        mut up: UpstreamSession,
        interim: Vec<ResponseHeader>,
        head: ResponseHeader,
        peer: &HttpPeer,
    ) -> pingora::Result<()> {
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
            self.shared
                .connector
                .release_http_session(h1, peer, Some(UPSTREAM_IDLE))
                .await;
        }
        Ok(())
    }
}

/// Whether a passthrough request can take the buffered path: an HTTP/1.1
/// client, a method whose response framing is ordinary, no upgrade or
/// `Expect`, and no body or a `Content-Length` body within [`COALESCE_LIMIT`].
/// Framing was already judged (`framing::check`): one valid length at most.
fn small_h1_request(session: &Session) -> bool {
    if session.as_downstream().as_http1().is_none() {
        return false;
    }
    let req = session.req_header();
    if req.version != http::Version::HTTP_11
        || req.method == Method::HEAD
        || req.method == Method::CONNECT
    {
        return false;
    }
    let h = &req.headers;
    if h.contains_key(http::header::TRANSFER_ENCODING)
        || h.contains_key(http::header::UPGRADE)
        || h.contains_key(EXPECT)
    {
        return false;
    }
    !h.contains_key(CONTENT_LENGTH)
        || declared_length(req).is_some_and(|n| n <= COALESCE_LIMIT as u64)
}

/// The request's `Content-Length`, when present and a number.
fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// How a request target is written (RFC 9112 §3.2), for the forms the proxy forwards.
enum TargetForm<'a> {
    /// `/path?query`, or `*` for `OPTIONS`: forwarded as it is.
    Origin,
    /// `scheme://authority/path?query`: forwarded as `origin`, with the
    /// authority as `Host`.
    Absolute {
        authority: &'a [u8],
        origin: std::borrow::Cow<'a, [u8]>,
    },
}

/// The request's target form; `None` for every other form (authority-form
/// `CONNECT`, `scheme:opaque`, a bare `?query`), which is refused: nothing
/// but an origin-form target is forwarded, so the app never routes on a form
/// the proxy did not judge.
fn target_form(req: &RequestHeader) -> Option<TargetForm<'_>> {
    use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') || (raw == b"*" && req.method == Method::OPTIONS) {
        return Some(TargetForm::Origin);
    }
    match raw_target_authority(raw) {
        RawTargetAuthority::Absolute {
            authority,
            path_and_query,
            ..
        } => {
            let origin = match path_and_query.first() {
                None => std::borrow::Cow::Borrowed(&b"/"[..]),
                Some(b'/') => std::borrow::Cow::Borrowed(path_and_query),
                Some(_) => std::borrow::Cow::Owned([b"/", path_and_query].concat()),
            };
            Some(TargetForm::Absolute { authority, origin })
        }
        _ => None,
    }
}

/// An HTTP/1.1 request without `Host` (RFC 9112 §3.2: answered 400).
fn missing_host(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST)
}

/// A request as the HTTP/1.1 app gets it, ready to write: the head, written
/// straight from the client's head (header names in the client's case, no
/// second header map built), with the body appended when it fits in one write.
struct Wire<'a> {
    /// The head, followed by the body when `rest` is empty.
    first: BytesMut,
    /// The body when it is written after the head (over [`COALESCE_LIMIT`]).
    rest: &'a [u8],
}

impl<'a> Wire<'a> {
    /// Hop-by-hop headers and the client's `Content-Length` are left out; the
    /// target is in origin form; `Host` follows the upstream's `host_header`
    /// (an HTTP/2 client's `:authority` becomes `Host`); then `extra`, and
    /// `Content-Length` when given.
    fn new(
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
                std::borrow::Cow::Borrowed(
                    uri.path_and_query()
                        .map_or(b"/".as_slice(), |p| p.as_str().as_bytes()),
                ),
                None,
            ),
            _ => (std::borrow::Cow::Borrowed(client.raw_path()), None),
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
        let own_host = up.host_header == config::HostHeader::Upstream;
        let replace_host = own_host || absolute_authority.is_some();
        let mut has_host = false;
        client.map(|name, value| {
            let name = match name {
                HeaderNameVariant::Case(c) => c.as_slice(),
                HeaderNameVariant::Titled(t) => t.as_bytes(),
            };
            let is = |other: &str| name.eq_ignore_ascii_case(other.as_bytes());
            has_host |= is("host");
            if !(HOP_BY_HOP.iter().any(|h| is(h))
                || is("content-length")
                || replace_host && is("host"))
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
        if coalesce {
            first.put_slice(body);
            return Ok(Wire { first, rest: &[] });
        }
        Ok(Wire { first, rest: body })
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
    h1.read_timeout = peer.options.read_timeout;
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
    Ok(h1)
}

/// Removes the headers that describe the app's connection, not the answer.
fn strip_response_hop_by_hop(head: &mut ResponseHeader) {
    for name in ["connection", "keep-alive", "proxy-connection", "upgrade"] {
        head.remove_header(name);
    }
}

#[async_trait]
impl ProxyHttp for Guard {
    type CTX = Ctx;

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // pingora's default adds its response-compression module, disabled,
        // which still runs on every request; persona-guard never compresses.
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _inflight: InflightGuard::new(&self.shared),
            started: Instant::now(),
            config: None,
            route: None,
            outcome: None,
            status: None,
            upstream_status: None,
            event_id: None,
            event_type: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let cfg = self.shared.config.load_full();
        ctx.config = Some(cfg.clone());

        // Framing: judged on the raw head, exactly as received. An HTTP/1.1
        // request without Host is refused too (RFC 9112 §3.2).
        if let Some(h1) = session.as_downstream().as_http1() {
            let refused = match framing::check(&h1.get_headers_raw_bytes()) {
                Err(e) => Some(e.to_string()),
                Ok(()) => missing_host(session.req_header()).then(|| "no Host header".to_string()),
            };
            if let Some(reason) = refused {
                tracing::debug!(reason, "refusing an ambiguous request");
                return respond(session, ctx, Outcome::MalformedRequest, false, None).await;
            }
        }
        // Pipelined requests (RFC 9112 §9.3.2) are each judged and answered in
        // order, rather than dropped with the connection after the first.
        session.as_downstream_mut().set_pipelining_enabled(true);
        strip_trusted(session.req_header_mut(), &cfg.headers);
        // The head is in: body reads get pingora's usual per-read bound back
        // (the webhook body also has its whole-body deadline).
        session.set_read_timeout(Some(BODY_READ_TIMEOUT));
        // Bound the wait for this connection's next request (pingora's default
        // keeps an HTTP/1.1 connection open forever). Only where keep-alive is on.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(cfg.idle_timeout.as_secs().max(1)));
        }

        // The route decision takes every reading of the target that some
        // application router takes (path::readings).
        let req = session.req_header();
        let decision = match target_form(req) {
            Some(_) => cfg.route_for_target(req.raw_path()),
            None => Err(config::RouteError::Form),
        };
        match decision {
            Err(e) => {
                tracing::debug!(reason = %e, "refusing a request target");
                respond(session, ctx, Outcome::InvalidPath, false, None).await
            }
            Ok(Some((i, route))) => {
                ctx.route = Some(i);
                self.webhook(session, ctx, &cfg, route).await
            }
            Ok(None) if cfg.unmatched == Unmatched::Deny => {
                respond(session, ctx, Outcome::NotFound, false, None).await
            }
            Ok(None) => self.passthrough(session, ctx, &cfg).await,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let cfg = match &ctx.config {
            Some(c) => c.clone(),
            None => self.shared.config.load_full(),
        };
        Ok(Box::new(peer_for(&cfg.upstream)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // Origin-form upstream: an absolute-form target gives its path and
        // query, and its authority becomes Host (RFC 9112 §3.2.2).
        if let Some(TargetForm::Absolute { authority, origin }) = target_form(upstream_request) {
            let (authority, origin) = (authority.to_vec(), origin.into_owned());
            upstream_request.set_raw_path(&origin)?;
            upstream_request.insert_header(http::header::HOST, authority)?;
        }
        if let Some(cfg) = &ctx.config
            && cfg.upstream.host_header == config::HostHeader::Upstream
        {
            upstream_request.insert_header(http::header::HOST, cfg.upstream.authority.as_str())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.outcome = Some(Outcome::Passthrough);
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        ctx.status = ctx.upstream_status;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if session.response_written().is_some() && ctx.outcome.is_some() {
            // A relay cut short after the answer began (relay_response): the
            // request's outcome stands; nothing more can be said, and the
            // connection (or HTTP/2 stream) ends without completing the body.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let outcome = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) => {
                let code = *code;
                if session.response_written().is_none() {
                    let _ = session.respond_error(code).await;
                }
                ctx.status = Some(code);
                return FailToProxy {
                    error_code: code,
                    can_reuse_downstream: false,
                };
            }
            (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
                Outcome::UpstreamTimeout
            }
            (ErrorSource::Upstream, _) => Outcome::UpstreamUnavailable,
            (ErrorSource::Downstream, _) if bad_body_framing(e) => Outcome::MalformedRequest,
            (ErrorSource::Downstream, _) => Outcome::ClientError,
            _ => Outcome::UpstreamUnavailable,
        };
        ctx.outcome = Some(outcome);
        if outcome == Outcome::ClientError || session.response_written().is_some() {
            // Nothing more can be said on this connection.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = outcome.status().map(|s| s.as_u16()).unwrap_or(502);
        let _ = respond(session, ctx, outcome, false, None).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        // Marks the next request on this connection as a keep-alive reuse, so
        // the head-timeout wrapper (server.rs) leaves its idle wait alone.
        Some(Box::new(ReusedConnection))
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // `logging` below writes one line per request; pingora's own error line
        // could quote request bytes.
        true
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let outcome = ctx.outcome.unwrap_or(if e.is_some() {
            Outcome::ClientError
        } else {
            Outcome::Passthrough
        });
        let route = match (&ctx.config, ctx.route) {
            (Some(cfg), Some(i)) => cfg.routes.get(i).map(|r| r.path.as_str()),
            _ => None,
        };
        self.shared
            .metrics
            .request(route.unwrap_or(metrics::NO_ROUTE), outcome);
        let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        match route {
            Some(route) => tracing::info!(
                route,
                outcome = outcome.code(),
                status = ctx.status,
                upstream_status = ctx.upstream_status,
                event_id = ctx.event_id.as_deref(),
                event_type = ctx.event_type.as_deref(),
                duration_ms = elapsed_ms,
                "webhook"
            ),
            None => tracing::debug!(
                outcome = outcome.code(),
                status = ctx.status,
                duration_ms = elapsed_ms,
                "passthrough"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(host_header: config::HostHeader) -> Upstream {
        Upstream {
            address: "127.0.0.1:3000".parse().unwrap(),
            authority: "app.internal:3000".into(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            tls: false,
            sni: String::new(),
            verify: true,
            host_header,
        }
    }

    fn client() -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/webhooks/persona?x=1", None).unwrap();
        for (k, v) in [
            ("Host", "public.example"),
            ("X-Mixed-Case", "one"),
            ("Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("content-length", "999"),
            ("x-mixed-case", "two"),
            ("Expect", "100-continue"),
            ("TE", "trailers"),
        ] {
            req.append_header(k.to_string(), v).unwrap();
        }
        req
    }

    fn text(w: &Wire<'_>) -> String {
        String::from_utf8(w.first.to_vec()).unwrap()
    }

    #[test]
    fn wire_keeps_client_headers_in_their_case_and_drops_hop_by_hop_ones() {
        let up = upstream(config::HostHeader::Keep);
        let event_id = HeaderName::from_static("x-persona-event-id");
        let w = Wire::new(&client(), &up, &[(&event_id, "evt_1")], Some(4), b"body").unwrap();
        assert_eq!(
            text(&w),
            "POST /webhooks/persona?x=1 HTTP/1.1\r\n\
             Host: public.example\r\n\
             X-Mixed-Case: one\r\n\
             x-mixed-case: two\r\n\
             x-persona-event-id: evt_1\r\n\
             Content-Length: 4\r\n\r\nbody"
        );
        assert!(w.rest.is_empty());
    }

    #[test]
    fn wire_host_policy_and_absolute_targets() {
        let mut req = client();
        req.set_uri("http://public.example/app/a?b=c".parse().unwrap());
        let w = Wire::new(
            &req,
            &upstream(config::HostHeader::Upstream),
            &[],
            None,
            b"",
        )
        .unwrap();
        let t = text(&w);
        assert!(t.starts_with("POST /app/a?b=c HTTP/1.1\r\n"), "{t}");
        assert!(t.contains("\r\nHost: app.internal:3000\r\n"), "{t}");
        assert!(!t.contains("public.example\r\n"), "{t}");
        assert!(!t.to_ascii_lowercase().contains("content-length"), "{t}");

        // An HTTP/2 client has no Host, only :authority.
        let mut h2 = RequestHeader::build("GET", b"/", None).unwrap();
        h2.set_uri("https://public.example/app".parse().unwrap());
        let w = Wire::new(&h2, &upstream(config::HostHeader::Keep), &[], None, b"").unwrap();
        assert_eq!(
            text(&w),
            "GET /app HTTP/1.1\r\nHost: public.example\r\n\r\n"
        );
    }

    #[test]
    fn wire_writes_large_bodies_after_the_head() {
        let wire = |body: &[u8]| -> (String, usize, bool) {
            let up = upstream(config::HostHeader::Keep);
            let w = Wire::new(&client(), &up, &[], Some(body.len()), body).unwrap();
            (text(&w), w.rest.len(), w.first.ends_with(body))
        };
        let large = vec![b'x'; COALESCE_LIMIT + 1];
        let (head, rest, _) = wire(&large);
        assert!(head.ends_with(&format!("Content-Length: {}\r\n\r\n", large.len())));
        assert_eq!(rest, large.len());
        let small = vec![b'y'; COALESCE_LIMIT];
        let (_, rest, ends_with_body) = wire(&small);
        assert!(rest == 0 && ends_with_body);
    }
}
