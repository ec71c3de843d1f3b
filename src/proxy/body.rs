//! Request bodies against the memory budget (`crate::budget`) and their pace.
//!
//! [`read_body`] reads a whole body (a delivery, a small passthrough request)
//! and reserves what it keeps as it grows; [`Streaming`] follows a body that
//! pingora's own path streams to the app (HTTP/2, chunked or large
//! passthrough bodies): pingora keeps a copy of the first 64 KiB of a body
//! (its retry buffer, freed once the body is longer) and the chunks on their
//! way to the app; both are reserved, each chunk until the upstream writer
//! drops it. pingora's HTTP/1 read buffer (up to 64 KiB per connection
//! reading a body) is the connection's cost, not counted here. A passthrough
//! body must also keep to `[server] min_body_rate` after a grace
//! ([`Pace::Rate`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use tokio::time::Instant;

use super::downstream::{bad_body_framing, declared_length};
use crate::budget::Permit;
use crate::config::BODY_RATE_GRACE;
use crate::outcome::Outcome;

/// pingora's retry buffer (`BODY_BUF_LIMIT` in pingora-core, HTTP/1 and 2):
/// the body's bytes are copied there while the whole body fits in it.
const RETRY_COPY: u64 = 64 * 1024;

/// When a body's bytes are due.
#[derive(Clone, Copy)]
pub enum Pace {
    /// The whole body by this instant (a webhook route's `body_timeout`).
    Deadline(Instant),
    /// On average at least `rate` bytes per second since `start`, after
    /// [`BODY_RATE_GRACE`] (`[server] min_body_rate`).
    Rate { start: Instant, rate: u64 },
}

impl Pace {
    /// When the next byte is due, `read` bytes having arrived.
    pub fn due(&self, read: u64) -> Instant {
        match *self {
            Pace::Deadline(d) => d,
            Pace::Rate { start, rate } => {
                let earned = Duration::from_secs_f64(read as f64 / rate.max(1) as f64);
                start + BODY_RATE_GRACE + earned
            }
        }
    }
}

/// Reads the whole request body within `max_body` bytes and its `pace` (each
/// read is also bounded by the session's read timeout). What is kept is
/// reserved in `permit` before it is kept: the first chunk as it is (a body
/// that arrives in one piece, the usual case, is returned without a copy),
/// then a buffer that at most doubles, never past the declared length. A
/// chunk the budget cannot hold ends the read: `Overloaded`.
pub async fn read_body(
    session: &mut Session,
    max_body: u64,
    pace: Pace,
    permit: &mut Permit,
) -> Result<Bytes, Outcome> {
    let limit = declared_length(session.req_header()).map_or(max_body, |d| d.min(max_body));
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        let held = first.as_ref().map_or(0, Bytes::len) + rest.len();
        let next = within(pace.due(held as u64), session.read_request_body()).await?;
        let chunk = match next {
            Err(e) if bad_body_framing(&e) => return Err(Outcome::MalformedRequest),
            Err(_) => return Err(Outcome::ClientError),
            Ok(None) => break,
            Ok(Some(c)) => c,
        };
        let need = (held + chunk.len()) as u64;
        if need > max_body {
            return Err(Outcome::BodyTooLarge);
        }
        if held == 0 && first.is_none() {
            if !permit.resize(chunk.len() as u64) {
                return Err(Outcome::Overloaded);
            }
            first = Some(chunk);
            continue;
        }
        if rest.capacity() - rest.len() < chunk.len() || first.is_some() {
            // A buffer twice the size (not past the body's declared length),
            // reserved before it is allocated; the old one goes after the copy.
            let cap = need.max(2 * rest.capacity() as u64).min(limit).max(need);
            if !permit.resize(cap) {
                return Err(Outcome::Overloaded);
            }
            let mut grown = BytesMut::with_capacity(cap as usize);
            match first.take() {
                Some(f) => grown.extend_from_slice(&f),
                None => grown.extend_from_slice(&rest),
            }
            rest = grown;
        }
        rest.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// `read`, unless `due` passes first (`BodyTimeout`). A read that is ready at
/// once (the usual body, already in with its head) sets no timer.
async fn within<T>(due: Instant, read: impl Future<Output = T>) -> Result<T, Outcome> {
    let mut read = std::pin::pin!(read);
    let now = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
    match now {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout_at(due, read)
            .await
            .map_err(|_| Outcome::BodyTimeout),
    }
}

/// A passthrough body on pingora's streaming path: its pace and what of it
/// pingora holds (see the module's notes).
pub struct Streaming {
    pace: Pace,
    read: u64,
    /// The retry copy's bytes.
    copy: Permit,
    /// HTTP/1: each read is bounded by the session's read timeout, set to
    /// when the next byte is due. HTTP/2 reads have no timeout in pingora:
    /// the pace is checked as each chunk arrives.
    h1: bool,
}

/// A chunk on its way to the app, with its reservation: given back when the
/// upstream writer drops it.
struct Held {
    bytes: Bytes,
    _permit: Permit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Streaming {
    /// Starts following a body; on HTTP/1 its first byte is due after the grace.
    pub fn start(session: &mut Session, rate: u64, permit: Permit) -> Streaming {
        let pace = Pace::Rate {
            start: Instant::now(),
            rate,
        };
        let h1 = !session.as_downstream().is_http2();
        if h1 {
            session.set_read_timeout(Some(BODY_RATE_GRACE));
        }
        Streaming {
            pace,
            read: 0,
            copy: permit,
            h1,
        }
    }

    /// A chunk read from the client: late (`BodyTimeout`) or past the budget
    /// (`Overloaded`) ends the request; otherwise it is reserved until the
    /// upstream writer drops it.
    pub fn chunk(
        &mut self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Outcome> {
        if body.as_ref().is_none_or(Bytes::is_empty) {
            return Ok(());
        }
        let data = body.take().unwrap_or_default();
        let now = Instant::now();
        // HTTP/1 reads are timed (below); an HTTP/2 chunk is judged on arrival.
        if !self.h1 && now > self.pace.due(self.read) {
            return Err(Outcome::BodyTimeout);
        }
        self.read += data.len() as u64;
        let copy = if self.read <= RETRY_COPY {
            self.read
        } else {
            0
        };
        let mut permit = self.copy.sibling();
        if !self.copy.resize(copy) || !permit.resize(data.len() as u64) {
            return Err(Outcome::Overloaded);
        }
        *body = Some(Bytes::from_owner(Held {
            bytes: data,
            _permit: permit,
        }));
        if self.h1 && !end {
            let due = self.pace.due(self.read).saturating_duration_since(now);
            session.set_read_timeout(Some(due.max(Duration::from_millis(1))));
        }
        Ok(())
    }

    /// The error that makes pingora end the request (see `fail_to_proxy`).
    pub fn cut(outcome: Outcome) -> Box<Error> {
        Error::explain(ErrorType::Custom("request body cut"), outcome.code())
    }
}
