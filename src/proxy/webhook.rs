//! The decision on a webhook route: [`judge`] takes a request from its head
//! to an admitted delivery or the outcome that refuses it, in the contract's
//! order (method, signature header, size and memory budget, body, signature
//! and timestamp, event (or, on a signature-only route, the id to
//! deduplicate on), allow-list, replay claim). Its only I/O is reading
//! the body and the claim; [`deliver`] forwards what was admitted and settles
//! the claim on the app's answer, counting the delivery by Persona's
//! `Attempts-Made` and flagging a failure on its last attempt.

mod keeper;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http::header::EXPECT;
use pingora::proxy::Session;

use super::body::{Pace, read_body};
use super::downstream::{Ctx, declared_length, respond};
use crate::attempts;
use crate::budget::Permit;
use crate::config::SpoolMode;
use crate::config::{OnStoreError, Route, RouteKind};
use crate::event::{self, Facts};
use crate::outcome::Outcome;
use crate::replay::{self, Claim, Lease};
use crate::signature::{self, SignatureHeader, Verdict};
use crate::state::{CompiledRoute, Policy, Shared};
use crate::telemetry::{self, Propagation};
use crate::upstream::{self, Answer, ForwardError, Wire};
use keeper::Keeper;

/// A delivery that passed every check: forward it.
pub struct Admitted {
    body: Bytes,
    /// The id the claim holds (event id, id at `id_pointer`, or the signed
    /// request's digest): what a spooled entry re-claims.
    replay_id: String,
    /// The event's id, type and created-at, as far as the route reads them.
    facts: Facts,
    /// `None` when the store failed and `on_store_error = "allow"`.
    claim: Option<Lease>,
    /// The body's share of `[server] max_buffered`, held until the request ends.
    _permit: Permit,
}

/// Why a delivery is not forwarded: persona-guard's answer, or (for
/// `ClientError`) nothing, the client having gone away.
pub type Rejection = Outcome;

/// The route and its compiled handles, as [`judge`] and [`deliver`] need them.
pub struct OnRoute<'a> {
    pub policy: &'a Policy,
    /// `compiled.route`, named for short.
    pub route: &'a Route,
    pub compiled: &'a CompiledRoute,
}

/// Judges a request on a webhook route. The event's id and type are mirrored
/// into `ctx` as soon as they are known (for the request's log line).
pub async fn judge(
    shared: &Arc<Shared>,
    session: &mut Session,
    ctx: &mut Ctx,
    on: &OnRoute<'_>,
) -> Result<Admitted, Rejection> {
    let parsed = signature_header(session)?;
    authenticate(session, ctx, on).await?;
    let (body, permit) = read_within_budget(shared, session, on).await?;
    let span = ctx.trace.as_ref().map(|t| t.child("verify"));
    let verified = verify(&parsed, &body, on);
    if let Some(span) = span {
        let outcome = verified.as_ref().map_or_else(|o| o.code(), |_| "valid");
        telemetry::end_child(span, outcome, &on.route.path, None);
    }
    let t = verified?;
    let (key, facts) = match &on.route.kind {
        RouteKind::Event => {
            let ev = event::parse(&body).map_err(|_| Outcome::InvalidEvent)?;
            let facts = Facts::of(&ev);
            ctx.mirror(&facts);
            // An ignored event is not remembered.
            if !on.route.allows(&ev.name) {
                return Err(Outcome::Ignored);
            }
            (ev.id.into_owned(), facts)
        }
        RouteKind::Signature { id_pointer: None } => (request_key(t, &body), Facts::default()),
        RouteKind::Signature {
            id_pointer: Some(pointer),
        } => {
            let id = event::id_at(&body, pointer).map_err(|_| Outcome::InvalidEvent)?;
            let facts = Facts {
                id: Some(id.clone()),
                ..Facts::default()
            };
            ctx.mirror(&facts);
            (id, facts)
        }
    };
    let span = ctx.trace.as_ref().map(|t| t.child("claim"));
    let claimed = claim(shared, on, &key, facts.id.as_deref()).await;
    if let Some(span) = span {
        let outcome = match &claimed {
            Ok(Some(_)) => "claimed",
            // The store failed and `on_store_error = "allow"`.
            Ok(None) => "unclaimed",
            Err(o) => o.code(),
        };
        telemetry::end_child(span, outcome, &on.route.path, facts.id.as_deref());
    }
    let claim = claimed?;
    Ok(Admitted {
        body,
        replay_id: key,
        facts,
        claim,
        _permit: permit,
    })
}

/// The method and the signature header's presence and form, before any body
/// byte is read.
fn signature_header(session: &Session) -> Result<SignatureHeader, Rejection> {
    if session.req_header().method != Method::POST {
        return Err(Outcome::MethodNotAllowed);
    }
    let mut values = session
        .req_header()
        .headers
        .get_all("persona-signature")
        .iter();
    match (values.next(), values.next()) {
        (None, _) => Err(Outcome::MissingSignature),
        (Some(_), Some(_)) => Err(Outcome::MalformedSignature),
        (Some(v), None) => signature::parse(v.as_bytes()).map_err(|_| Outcome::MalformedSignature),
    }
}

/// The route's static header tokens and bearer token (the contract's §10),
/// after the signature header's form and before the body. On a pass both are
/// removed from the request, so neither reaches the app nor the spool.
async fn authenticate(
    session: &mut Session,
    ctx: &mut Ctx,
    on: &OnRoute<'_>,
) -> Result<(), Rejection> {
    use crate::auth::Refusal;
    let auth = &on.compiled.auth;
    if !auth.is_required() {
        return Ok(());
    }
    if let Err(refusal) = auth.check(&session.req_header().headers).await {
        ctx.failed_check = Some(refusal.check());
        return Err(match refusal {
            Refusal::HeaderToken(_) => Outcome::InvalidHeaderToken,
            Refusal::MissingToken => Outcome::MissingToken,
            Refusal::InvalidToken(_) => Outcome::InvalidToken,
        });
    }
    let req = session.req_header_mut();
    for h in &auth.headers {
        req.remove_header(&h.name);
    }
    if auth.oauth.is_some() {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    Ok(())
}

/// The body, within the route's `max_body`, `body_timeout` and the memory
/// budget: its bytes are reserved as they arrive (`body::read_body`), never
/// on a declared length.
async fn read_within_budget(
    shared: &Arc<Shared>,
    session: &mut Session,
    on: &OnRoute<'_>,
) -> Result<(Bytes, Permit), Rejection> {
    let max_body = on.route.max_body;
    if declared_length(session.req_header()).is_some_and(|n| n > max_body) {
        return Err(Outcome::BodyTooLarge);
    }
    let mut permit = shared
        .budget
        .permit(super::budget_key(session, &on.policy.config));
    if session.req_header().headers.contains_key(EXPECT) {
        session
            .write_continue_response()
            .await
            .map_err(|_| Outcome::ClientError)?;
        session.req_header_mut().remove_header(&EXPECT);
    }
    let deadline = tokio::time::Instant::now() + on.policy.config.policy.body_timeout;
    let body = read_body(session, max_body, Pace::Deadline(deadline), &mut permit).await?;
    Ok((body, permit))
}

/// The replay key of a signed request on a signature-only route without
/// `id_pointer`: a digest of the verified set's `t` and the body, so the same
/// signed request is a duplicate and a re-signed one (new `t`) is not. The
/// header's spelling (spaces, extra sets or keys) does not change it.
fn request_key(t: i64, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(t.to_string().as_bytes());
    h.update(b".");
    h.update(body);
    format!("signed:{}", hex::encode(h.finalize()))
}

/// The signature over the raw body, and its timestamp: the `t` of the set
/// that verified.
fn verify(parsed: &SignatureHeader, body: &[u8], on: &OnRoute<'_>) -> Result<i64, Rejection> {
    let started = Instant::now();
    let (verdict, t) = signature::verify_timed(
        parsed,
        &on.route.secrets,
        body,
        crate::clock::unix_now().as_secs() as i64,
        on.route.tolerance.as_secs() as i64,
    );
    on.compiled.verify.observe(started.elapsed().as_secs_f64());
    match verdict {
        Verdict::Invalid => Err(Outcome::InvalidSignature),
        Verdict::Stale => Err(Outcome::TimestampOutOfTolerance),
        Verdict::Valid { secret_index } => {
            if let Some(c) = on.compiled.secret_matches.get(secret_index) {
                c.inc();
            }
            Ok(t.unwrap_or_default())
        }
    }
}

/// The replay claim: `id` (the event id, the id at `id_pointer`, or the
/// signed request's digest) in flight for this delivery, or the reason not
/// to forward it. `log_id` is what a log line may name (never the digest).
async fn claim(
    shared: &Arc<Shared>,
    on: &OnRoute<'_>,
    id: &str,
    log_id: Option<&str>,
) -> Result<Option<Lease>, Rejection> {
    let replay = &on.policy.config.policy.replay;
    let store = shared.store();
    match replay::claim(&store, &on.route.normalized, id, replay.inflight_ttl).await {
        Ok(Claim::Claimed(lease)) => {
            shared.metrics.replay_insertions.inc();
            let shared = shared.clone();
            Ok(Some(lease.on_error(move |op, e| shared.store_error(op, e))))
        }
        Ok(Claim::Duplicate) => Err(Outcome::Duplicate),
        Ok(Claim::InFlight { retry_after }) => Err(Outcome::DeliveryInProgress {
            retry_after: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
        }),
        Err(e) => {
            shared.store_error("claim", &e);
            match replay.on_store_error {
                OnStoreError::Reject => Err(Outcome::ReplayStoreUnavailable),
                OnStoreError::Allow => {
                    tracing::warn!(
                        route = on.route.path.as_str(),
                        event_id = log_id,
                        "replay store unavailable: forwarding WITHOUT replay protection (on_store_error = \"allow\")"
                    );
                    shared.metrics.replay_fail_open.inc();
                    Ok(None)
                }
            }
        }
    }
}

/// Forwards an admitted delivery with the trusted headers, settles its claim
/// on the app's answer head (delivered on 2xx, released otherwise), then
/// relays the answer.
pub async fn deliver(
    shared: &Arc<Shared>,
    session: &mut Session,
    ctx: &mut Ctx,
    on: &OnRoute<'_>,
    admitted: Admitted,
) -> pingora::Result<bool> {
    let propagation = ctx
        .trace
        .as_mut()
        .map(|t| t.start_upstream(Some(&on.route.path)));
    let last_attempt = count_attempt(session, on);
    let Admitted {
        body,
        replay_id,
        facts,
        claim,
        ..
    } = admitted;
    let wire = request(session, on, &facts, propagation.as_ref(), &body)?;
    let spool = shared
        .spool
        .get()
        .filter(|_| on.route.spool != SpoolMode::Off);
    let mut pending = Pending {
        keeper: Keeper {
            shared,
            spool,
            on,
            facts: &facts,
            wire: &wire,
            body: &body,
            replay_id: &replay_id,
        },
        claim,
        last_attempt,
    };
    if pending.spooled(SpoolMode::Always).await {
        return respond(session, ctx, Outcome::Spooled).await;
    }
    let sent = Instant::now();
    match exchange(shared, ctx, on, &wire).await {
        Ok(answer) => pending.answered(session, ctx, answer, sent).await,
        Err(e) => pending.unanswered(session, ctx, e).await,
    }
}

/// The request to the app: the client's head with the trusted headers (the
/// event's facts the route reads, then the trace context) and the body.
fn request<'b>(
    session: &Session,
    on: &OnRoute<'_>,
    facts: &Facts,
    propagation: Option<&Propagation>,
    body: &'b [u8],
) -> pingora::Result<Wire<'b>> {
    let mut trusted: Vec<_> = (on.policy.config.policy.headers.iter())
        .filter_map(|(fact, name)| Some((name, facts.get(*fact)?)))
        .collect();
    trusted.extend(propagation.iter().flat_map(|p| p.headers()));
    Wire::new(
        session.req_header(),
        &on.route.upstream,
        &trusted,
        Some(body.len()),
        body,
    )
}

/// Sends the request to the app and ends the trace's upstream span with its
/// answer's status, or the failure that took its place.
async fn exchange(
    shared: &Shared,
    ctx: &mut Ctx,
    on: &OnRoute<'_>,
    wire: &Wire<'_>,
) -> Result<Answer, ForwardError> {
    let exchanged = upstream::exchange(&shared.connector, &on.compiled.peer, wire).await;
    if let Some(t) = &mut ctx.trace {
        match &exchanged {
            Ok(a) => t.end_upstream(Some(a.head.status.as_u16()), None),
            Err(e) => t.end_upstream(None, Some(Outcome::from(*e).code())),
        }
    }
    exchanged
}

/// A delivery on its way to the app: its claim, which the app's answer (or
/// its failure) settles, or the spool takes over.
struct Pending<'a> {
    keeper: Keeper<'a>,
    claim: Option<Lease>,
    /// `Attempts-Left` is 0: Persona will not retry the delivery on its own.
    last_attempt: bool,
}

impl Pending<'_> {
    /// Keeps the delivery in the spool when the route's `spool` mode is
    /// `mode`: `true` once it is durable (see [`Keeper`]).
    async fn spooled(&mut self, mode: SpoolMode) -> bool {
        self.keeper.on.route.spool == mode && self.keeper.keep(&mut self.claim).await
    }

    /// The app did not answer: the delivery is spooled under
    /// `spool = "on_failure"`; otherwise its claim is released and the
    /// failure answered.
    async fn unanswered(
        mut self,
        session: &mut Session,
        ctx: &mut Ctx,
        e: ForwardError,
    ) -> pingora::Result<bool> {
        if self.spooled(SpoolMode::OnFailure).await {
            return respond(session, ctx, Outcome::Spooled).await;
        }
        if let Some(c) = self.claim {
            c.release().await;
        }
        let outcome: Outcome = e.into();
        if self.last_attempt {
            final_attempt_failed(&self.keeper, outcome.code(), None);
        }
        respond(session, ctx, outcome).await
    }

    /// The app answered: its time is observed; a failing answer under
    /// `spool = "on_failure"` is spooled instead; otherwise the claim is
    /// settled and the answer relayed.
    async fn answered(
        mut self,
        session: &mut Session,
        ctx: &mut Ctx,
        answer: Answer,
        sent: Instant,
    ) -> pingora::Result<bool> {
        let on = self.keeper.on;
        let status = answer.head.status;
        on.compiled
            .upstream_duration(status.as_u16())
            .observe(sent.elapsed().as_secs_f64());
        if spools_on(status) && self.spooled(SpoolMode::OnFailure).await {
            // The app's answer is dropped unread, with its connection.
            drop(answer);
            return respond(session, ctx, Outcome::Spooled).await;
        }
        // The application has answered: settle the claim before anything can fail.
        self.settle(status).await;
        if self.last_attempt && !status.is_success() {
            final_attempt_failed(&self.keeper, "upstream_status", Some(status.as_u16()));
        }
        ctx.outcome = Some(Outcome::Forwarded);
        ctx.upstream_status = Some(status.as_u16());
        ctx.status = ctx.upstream_status;
        let peer = &on.compiled.peer;
        answer
            .relay(&self.keeper.shared.connector, session, peer)
            .await?;
        Ok(true)
    }

    /// Settles the claim on the app's status: delivered on 2xx (the route's
    /// spool told it has recovered), released otherwise.
    async fn settle(&mut self, status: http::StatusCode) {
        let Keeper {
            shared,
            on,
            spool,
            replay_id,
            ..
        } = self.keeper;
        if let Some(c) = self.claim.take() {
            if status.is_success() {
                let (current, ttl) = (shared.store(), on.policy.config.policy.replay.ttl);
                c.commit_through(&current, &on.route.normalized, replay_id, ttl)
                    .await;
                if let Some(spool) = spool {
                    spool.recovered(&on.route.path);
                }
            } else {
                c.release().await;
            }
        }
    }
}

/// The app's answers that `spool = "on_failure"` keeps the delivery on:
/// 5xx, 408 and 429 (a 4xx otherwise says the request itself is refused,
/// which redelivering would not change).
fn spools_on(status: http::StatusCode) -> bool {
    status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
}

/// Counts a delivery about to be forwarded by its `Attempts-Made`, and says
/// whether `Attempts-Left` is 0 (Persona will not retry it on its own).
fn count_attempt(session: &Session, on: &OnRoute<'_>) -> bool {
    let headers = &session.req_header().headers;
    let value = |name| attempts::count(headers.get_all(name).iter().map(|v| v.as_bytes()));
    on.compiled.attempts[attempts::label_index(value(attempts::MADE))].inc();
    attempts::is_last(value(attempts::LEFT))
}

/// A forwarded delivery failed on Persona's last automatic attempt: counted
/// and logged at `error` with the event's id and type (never its body), since
/// only an operator's manual retry can deliver it now.
fn final_attempt_failed(delivery: &Keeper<'_>, failure: &'static str, status: Option<u16>) {
    let Keeper { on, facts, .. } = delivery;
    on.compiled.final_failures.inc();
    tracing::error!(
        route = on.route.path.as_str(),
        event_id = facts.id.as_deref(),
        event_type = facts.event_type.as_deref(),
        failure,
        upstream_status = status,
        "delivery failed on Persona's last automatic attempt (Persona-Webhook-Attempts-Left: 0); Persona will not retry it on its own"
    );
}
