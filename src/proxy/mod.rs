//! The pingora phases: where every request is judged.
//!
//! Everything happens in `request_filter`, the only phase that runs before
//! pingora picks and connects an upstream:
//!
//! 1. framing (raw HTTP/1 head), the `Host` rule (`host[:port]`) and the
//!    trusted-header strip, on every path; `OPTIONS *` is answered here;
//! 2. the route decision over every reading of the target ([`crate::path`]),
//!    then the route's `allow_from` on the client address ([`crate::source`]);
//! 3. on a webhook route, [`webhook::judge`] (method, signature header, body
//!    size and memory budget, the whole body bounded in size and time,
//!    signature and timestamp, event, allow-list, replay claim), then
//!    [`webhook::deliver`] forwards the admitted delivery **through this
//!    module's own client** ([`forward`]) on pingora's connector and pool,
//!    streams the answer back and settles the claim (delivered on 2xx,
//!    released otherwise).
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

mod body;
mod downstream;
mod webhook;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::{Config, HostHeader, Route, RouteError, Unmatched};
use crate::head_watch::HeadMark;
use crate::outcome::Outcome;
use crate::source;
use crate::state::{InflightGuard, Policy, Shared};
use crate::telemetry;
use crate::upstream::{self, COALESCE_LIMIT, TargetForm, Wire, target_form};
use body::{Pace, Streaming, read_body};
pub use downstream::Ctx;
use downstream::{
    answer_asterisk, bad_body_framing, body_refused, is_asterisk, refused_head, respond,
    small_h1_request, strip_trusted,
};
use webhook::OnRoute;

/// Per-read bound on request bodies (pingora's default).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The proxy application.
pub struct Guard {
    pub shared: Arc<Shared>,
}

/// Whether `route` accepts the request's client address: any, without
/// `allow_from`; otherwise the address ([`client_address`]) must be in the
/// list. An address that cannot be told is refused.
fn source_allowed(session: &Session, cfg: &Config, route: &Route) -> bool {
    let Some(allow) = &route.allow_from else {
        return true;
    };
    client_address(session, cfg).is_some_and(|ip| allow.contains(ip))
}

/// The request's client address ([`source::client_address`]: the TCP peer,
/// or behind `[server] trusted_proxies` the right-most untrusted
/// `X-Forwarded-For` entry); `None` when it cannot be told (no IP peer, a
/// malformed entry).
fn client_address(session: &Session, cfg: &Config) -> Option<IpAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet())?;
    let forwarded = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes());
    source::client_address(peer.ip(), &cfg.policy.trusted_proxies, forwarded)
}

/// The address whose share of the body budget (`max_buffered_per_client`) a
/// request uses: its client address, or the TCP peer when that cannot be told.
fn budget_key(session: &Session, cfg: &Config) -> IpAddr {
    client_address(session, cfg)
        .or_else(|| Some(session.client_addr()?.as_inet()?.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Whether pingora's streaming path will read a request body (an upgrade's
/// bytes after `101` are a stream of their own, not a body).
fn streams_a_body(session: &mut Session) -> bool {
    !session
        .req_header()
        .headers
        .contains_key(http::header::UPGRADE)
        && !session.as_downstream_mut().is_body_empty()
}

impl Guard {
    /// Judges a request on route `index` and forwards it if admitted.
    async fn webhook(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
        index: usize,
    ) -> pingora::Result<bool> {
        let compiled = &policy.routes[index];
        let on = OnRoute {
            policy,
            route: &compiled.route,
            compiled,
        };
        match webhook::judge(&self.shared, session, ctx, &on).await {
            Ok(admitted) => webhook::deliver(&self.shared, session, ctx, &on, admitted).await,
            Err(outcome) => body_refused(session, ctx, outcome).await,
        }
    }

    /// Forwards a small HTTP/1.1 passthrough request the way a delivery is
    /// forwarded: the body (if any) read whole, head and body in one write, the
    /// response streamed back. Returns `Ok(false)`, leaving the request to
    /// pingora's streaming proxy, for everything else: HTTP/2 clients, other
    /// HTTP versions, `HEAD`/`CONNECT`, upgrades, `Expect`, chunked bodies and
    /// bodies over [`COALESCE_LIMIT`].
    async fn passthrough(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
    ) -> pingora::Result<bool> {
        let cfg = &policy.config;
        let mut permit = self.shared.budget.permit(budget_key(session, cfg));
        if !small_h1_request(session) {
            if streams_a_body(session) {
                ctx.streaming = Some(Streaming::start(session, cfg.policy.min_body_rate, permit));
            }
            return Ok(false);
        }
        // Each read is also bounded by the session's read timeout.
        let pace = Pace::Rate {
            start: tokio::time::Instant::now(),
            rate: cfg.policy.min_body_rate,
        };
        let body = match read_body(session, COALESCE_LIMIT as u64, pace, &mut permit).await {
            Ok(b) => b,
            Err(o) => return body_refused(session, ctx, o).await,
        };
        let client = session.req_header();
        let declared = client.headers.contains_key(http::header::CONTENT_LENGTH);
        let up = &policy.config.policy.upstream;
        let propagation = ctx.trace.as_mut().map(|t| t.start_upstream(None));
        let traced: Vec<_> = propagation.iter().flat_map(|p| p.headers()).collect();
        let wire = Wire::new(client, up, &traced, declared.then_some(body.len()), &body)?;
        let peer = &policy.passthrough;
        let answer = match upstream::exchange(&self.shared.connector, peer, &wire).await {
            Ok(a) => a,
            Err(e) => return respond(session, ctx, e.into()).await,
        };
        if let Some(t) = &mut ctx.trace {
            t.end_upstream(Some(answer.head.status.as_u16()), None);
        }
        ctx.outcome = Some(Outcome::Passthrough);
        ctx.upstream_status = Some(answer.head.status.as_u16());
        ctx.status = ctx.upstream_status;
        answer.relay(&self.shared.connector, session, peer).await?;
        Ok(true)
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
            policy: None,
            route: None,
            outcome: None,
            status: None,
            upstream_status: None,
            event_id: None,
            event_type: None,
            trace: None,
            streaming: None,
            cut: None,
            failed_check: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let policy = self.shared.policy.load_full();
        ctx.policy = Some(policy.clone());
        let cfg = &policy.config;
        if let Some(t) = self.shared.telemetry.get() {
            // Only a trusted proxy's sampled flag may raise sampling.
            let peer = session.client_addr().and_then(|a| a.as_inet());
            let trusted = peer.is_some_and(|p| cfg.policy.trusted_proxies.contains(p.ip()));
            ctx.trace = Some(t.request(&session.req_header().headers, trusted));
        }

        if let Some(reason) = refused_head(session) {
            tracing::debug!(reason, "refusing an ambiguous request");
            return respond(session, ctx, Outcome::MalformedRequest).await;
        }
        // Pipelined requests (RFC 9112 §9.3.2) are each judged and answered in
        // order, rather than dropped with the connection after the first.
        session.as_downstream_mut().set_pipelining_enabled(true);
        strip_trusted(session.req_header_mut(), &cfg.policy.headers);
        // The head is in: body reads get pingora's usual per-read bound back
        // (the webhook body also has its whole-body deadline).
        session.set_read_timeout(Some(BODY_READ_TIMEOUT));
        // Bound the wait for this connection's next request (pingora's default
        // keeps an HTTP/1.1 connection open forever). Only where keep-alive is on.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(cfg.process.idle_timeout.as_secs().max(1)));
        }

        // Asterisk-form asks about the server, not a resource: answered here
        // (after the Host rule), never forwarded.
        if is_asterisk(session.req_header()) {
            return answer_asterisk(session, ctx).await;
        }

        // The route decision takes every reading of the target that some
        // application router takes (path::readings).
        let req = session.req_header();
        let decision = match target_form(req) {
            Some(_) => cfg.route_for_target(req.raw_path()),
            None => Err(RouteError::Form),
        };
        match decision {
            Err(e) => {
                tracing::debug!(reason = %e, "refusing a request target");
                respond(session, ctx, Outcome::InvalidPath).await
            }
            Ok(Some((i, route))) => {
                ctx.route = Some(i);
                // Before any other check on the route: nothing of a refused
                // source's request is judged, read or forwarded.
                if !source_allowed(session, cfg, route) {
                    return respond(session, ctx, Outcome::SourceNotAllowed).await;
                }
                self.webhook(session, ctx, &policy, i).await
            }
            Ok(None) if cfg.policy.unmatched == Unmatched::Deny => {
                respond(session, ctx, Outcome::NotFound).await
            }
            Ok(None) => self.passthrough(session, ctx, &policy).await,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let policy = match &ctx.policy {
            Some(p) => p.clone(),
            None => self.shared.policy.load_full(),
        };
        Ok(Box::new(policy.passthrough.clone()))
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
        if let Some(policy) = &ctx.policy {
            let up = &policy.config.policy.upstream;
            if up.host_header == HostHeader::Upstream {
                upstream_request.insert_header(http::header::HOST, up.authority.as_str())?;
            }
        }
        if let Some(t) = &mut ctx.trace {
            // The client's trace context is replaced by the upstream span's.
            let p = t.start_upstream(None);
            upstream_request.remove_header(&telemetry::TRACESTATE);
            upstream_request.insert_header(&telemetry::TRACEPARENT, p.traceparent.as_str())?;
            if !p.tracestate.is_empty() {
                upstream_request.insert_header(&telemetry::TRACESTATE, p.tracestate.as_str())?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let Some(streaming) = &mut ctx.streaming else {
            return Ok(());
        };
        if let Err(outcome) = streaming.chunk(session, body, end_of_stream) {
            ctx.cut = Some(outcome);
            return Err(Streaming::cut(outcome));
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
        if let Some(t) = &mut ctx.trace {
            t.end_upstream(ctx.upstream_status, None);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let closed = |error_code| FailToProxy {
            error_code,
            can_reuse_downstream: false,
        };
        if session.response_written().is_some() && ctx.outcome.is_some() {
            // A relay cut short after the answer began (`Answer::relay`): the
            // request's outcome stands; nothing more can be said, and the
            // connection (or HTTP/2 stream) ends without completing the body.
            return closed(0);
        }
        if let Some(outcome) = cut_body(session, e, ctx) {
            return cut_answer(session, ctx, outcome).await;
        }
        let outcome = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) => {
                let code = *code;
                if session.response_written().is_none() {
                    let _ = session.respond_error(code).await;
                }
                ctx.status = Some(code);
                return closed(code);
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
            return closed(0);
        }
        // pingora's streaming path may have left the request body half read.
        session.set_keepalive(None);
        let code = outcome.status().map(|s| s.as_u16()).unwrap_or(502);
        let _ = respond(session, ctx, outcome).await;
        closed(code)
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        mark: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // pingora calls this right after it parsed an HTTP/1 head, with the
        // mark the connection loop gave the session (`server/connection.rs`):
        // the head is in, its deadline stops.
        HeadMark::done(mark);
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
        let policy = match &ctx.policy {
            Some(p) => p.clone(),
            None => self.shared.policy.load_full(),
        };
        let compiled = ctx.route.and_then(|i| policy.routes.get(i));
        let counters = compiled.map_or(&policy.no_route, |r| &r.outcomes);
        counters.inc(outcome);
        let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        let route_cfg = compiled.map(|c| &c.route);
        if let Some(t) = ctx.trace.take() {
            t.finish(
                route_cfg.map(|r| r.path.as_str()),
                outcome.code(),
                ctx.status,
                ctx.event_id.as_deref(),
                ctx.event_type.as_deref(),
            );
        }
        match route_cfg {
            Some(route) => tracing::info!(
                route = route.path.as_str(),
                outcome = outcome.code(),
                status = ctx.status,
                upstream_status = ctx.upstream_status,
                event_id = ctx.event_id.as_deref(),
                event_type = ctx.event_type.as_deref(),
                check = ctx.failed_check,
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

/// Why a streamed passthrough body was ended by the proxy: the budget or the
/// pace (`request_body_filter`), or an HTTP/1 read past the time the next
/// byte was due (the session's read timeout, set from `min_body_rate`).
fn cut_body(session: &Session, e: &Error, ctx: &mut Ctx) -> Option<Outcome> {
    if let Some(outcome) = ctx.cut.take() {
        return Some(outcome);
    }
    let late = ctx.streaming.is_some()
        && session.response_written().is_none()
        && e.esource() == &ErrorSource::Downstream
        && e.etype() == &ErrorType::ReadTimedout;
    late.then_some(Outcome::BodyTimeout)
}

/// The answer to a cut body, once nothing of the app's answer was sent: 503
/// `overloaded` or (HTTP/1) 408 `body_timeout`, and the connection closes; a
/// late HTTP/2 body gets its stream reset. The app's connection, mid-request,
/// is dropped by pingora.
async fn cut_answer(session: &mut Session, ctx: &mut Ctx, outcome: Outcome) -> FailToProxy {
    ctx.outcome = Some(outcome);
    let reset = outcome == Outcome::BodyTimeout && session.as_downstream().is_http2();
    let mut error_code = 0;
    if session.response_written().is_none() && !reset {
        session.set_keepalive(None);
        let _ = respond(session, ctx, outcome).await;
        error_code = outcome.status().map_or(0, |s| s.as_u16());
    }
    FailToProxy {
        error_code,
        can_reuse_downstream: false,
    }
}
