//! The client's side of a request: its per-request context, persona-guard's
//! own answers, reading the body, and what the head says about framing,
//! target form and trusted headers.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER};
use http::{HeaderName, Method, StatusCode};
use pingora::Error;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::TrustedHeaders;
use crate::event::Facts;
use crate::framing::valid_host;
use crate::outcome::Outcome;
use crate::state::{InflightGuard, Policy};
use crate::upstream::COALESCE_LIMIT;

/// Per-request state.
pub struct Ctx {
    pub _inflight: InflightGuard,
    pub started: Instant,
    /// The policy this request is judged under (a reload mid-request does not
    /// change it).
    pub policy: Option<Arc<Policy>>,
    pub route: Option<usize>,
    pub outcome: Option<Outcome>,
    /// The status sent to the client.
    pub status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The request's spans, when tracing is on (`[tracing]`); `None` costs
    /// nothing.
    pub trace: Option<Box<crate::telemetry::RequestTrace>>,
    /// A passthrough body on pingora's streaming path (`body::Streaming`).
    pub streaming: Option<super::body::Streaming>,
    /// Why the proxy ended a streamed body (`overloaded`, `body_timeout`).
    pub cut: Option<Outcome>,
    /// The check a refused token or header token failed (for the log line;
    /// never the token).
    pub failed_check: Option<&'static str>,
}

impl Ctx {
    /// Copies the event's id and type for the request's log line and span.
    pub fn mirror(&mut self, facts: &Facts) {
        self.event_id.clone_from(&facts.id);
        self.event_type.clone_from(&facts.event_type);
    }
}

/// Writes a JSON answer of persona-guard's own. The outcome says whether the
/// connection closes afterwards and what `Retry-After` to send.
pub async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    outcome: Outcome,
) -> pingora::Result<bool> {
    ctx.outcome = Some(outcome);
    let status = outcome.status().unwrap_or(StatusCode::OK);
    ctx.status = Some(status.as_u16());
    let body = Bytes::from(outcome.body());
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "application/json")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    if let Some(secs) = outcome.retry_after() {
        resp.insert_header(RETRY_AFTER, secs.to_string())?;
    }
    if outcome.closes() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// Ends a request whose body could not be read: a client that went away gets
/// nothing more; a body too large or too slow gets its answer. Either way the
/// connection closes, since the rest of the body is unread.
pub async fn body_refused(
    session: &mut Session,
    ctx: &mut Ctx,
    outcome: Outcome,
) -> pingora::Result<bool> {
    if outcome == Outcome::ClientError {
        ctx.outcome = Some(Outcome::ClientError);
        session.set_keepalive(None);
        return Ok(true);
    }
    respond(session, ctx, outcome).await
}

/// A request body whose chunked framing is broken (a bad chunk size, data
/// longer than its size, a bad line end): the client gets 400, not a cut.
pub fn bad_body_framing(e: &Error) -> bool {
    matches!(e.etype().as_str(), "InvalidChunk" | "InvalidTrailerEnd")
}

/// Removes every client-sent copy of the trusted headers: any case, `_` or `-`.
pub fn strip_trusted(req: &mut RequestHeader, names: &TrustedHeaders) {
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
        .filter(|k| {
            same(k, &crate::reconcile::SOURCE_HEADER) || names.iter().any(|(_, t)| same(k, t))
        })
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
}

/// Whether a passthrough request can take the buffered path: an HTTP/1.1
/// client, a method whose response framing is ordinary, no upgrade or
/// `Expect`, and no body or a `Content-Length` body within [`COALESCE_LIMIT`].
/// Framing was already judged (`framing::check`): one valid length at most.
pub fn small_h1_request(session: &Session) -> bool {
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
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Why the head is refused before any routing: ambiguous framing (judged on
/// the raw HTTP/1 head, exactly as received), or a `Host` (HTTP/2: `host`
/// and `:authority`) that is missing where required or is not a host with an
/// optional port.
pub fn refused_head(session: &Session) -> Option<String> {
    if let Some(h1) = session.as_downstream().as_http1()
        && let Err(e) = crate::framing::check(&h1.get_headers_raw_bytes())
    {
        return Some(e.to_string());
    }
    host_problem(session.req_header()).map(str::to_string)
}

/// What is wrong with the request's `Host` header(s) and target authority.
/// An HTTP/1.1 request needs a `Host` (RFC 9112 §3.2), an HTTP/2 one a
/// `:authority` or a `host`; each present must pass [`valid_host`]. An app
/// that builds a URL from `'http://' + host + target` (Node's documented
/// pattern) must not be handed a `Host` that carries a path.
fn host_problem(req: &RequestHeader) -> Option<&'static str> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter().peekable();
    let authority = req.uri.authority();
    let required = match req.version {
        http::Version::HTTP_11 => true,
        http::Version::HTTP_2 => authority.is_none(),
        _ => false,
    };
    if required && hosts.peek().is_none() {
        return Some("no Host header");
    }
    if hosts.any(|h| !valid_host(h.as_bytes())) {
        return Some("a Host that is not host[:port]");
    }
    match authority {
        Some(a) if !valid_host(a.as_str().as_bytes()) => {
            Some("an authority that is not host[:port]")
        }
        _ => None,
    }
}

/// Whether the target is asterisk-form (`OPTIONS *`), which the proxy answers
/// itself ([`answer_asterisk`]) and never forwards.
pub fn is_asterisk(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS && req.raw_path() == b"*"
}

/// The methods the proxy passes on, named in its answer to `OPTIONS *`.
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Answers `OPTIONS *` (a question about the server, not a resource): 204
/// with `Allow`. Nothing reaches the app. A request that declares a body
/// closes the connection (the body is not read).
pub async fn answer_asterisk(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let mut resp = ResponseHeader::build(StatusCode::NO_CONTENT, Some(2))?;
    resp.insert_header(http::header::ALLOW, ALLOW)?;
    let h = &session.req_header().headers;
    if h.contains_key(http::header::TRANSFER_ENCODING)
        || declared_length(session.req_header()).is_some_and(|n| n > 0)
    {
        session.set_keepalive(None);
    }
    ctx.status = Some(StatusCode::NO_CONTENT.as_u16());
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_header_is_stripped_in_any_spelling_like_the_trusted_headers() {
        let mut req = RequestHeader::build("POST", b"/w", None).unwrap();
        for name in [
            "X-Persona-Guard-Source",
            "x_persona_guard_source",
            "X-Persona-Event-Id",
            "X-Other",
        ] {
            req.append_header(name, "forged").unwrap();
        }
        let names: TrustedHeaders = vec![(
            crate::event::Fact::Id,
            HeaderName::from_static("x-persona-event-id"),
        )];
        strip_trusted(&mut req, &names);
        let left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-other"]);
    }
}
