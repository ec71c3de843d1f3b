//! The whole-head deadline on an HTTP/1 client connection: a request head
//! must arrive whole within `header_timeout`, counted from its first byte
//! (from the connection's start for its first request).
//!
//! pingora 0.9.1 reads a head (`HttpSession::read_request`) with a timeout on
//! each read only (the keep-alive wait, or `read_timeout`), so a client sending
//! a byte now and then kept a connection, and its task, for as long as it
//! liked. Three parts enforce the deadline instead:
//!
//! * a [`HeadClock`] per connection says whether a head is awaited and by when;
//! * [`HeadWatch`], the stream under pingora's HTTP/1 session, starts the clock
//!   at the first byte read while a head is awaited (a reused connection's
//!   wait for that byte stays pingora's keep-alive wait, `idle_timeout`);
//! * the proxy marks the head done as soon as pingora has parsed it (its
//!   `on_connection_reuse` hook, which pingora calls right after the head is
//!   read, with the [`HeadMark`] the connection loop hands each session), and
//!   [`within_head_deadline`] drops the request's task (closing the
//!   connection) when the deadline passes first.
//!
//! A head pipelined behind a previous request's body is already read when its
//! session starts: the clock starts at the next byte read, or the head is
//! parsed from what was read. Such a head is due at most `idle_timeout` +
//! `header_timeout` after its session starts.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::protocols::{Peek, Stream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// No head awaited (a request is being served).
const IDLE: u64 = 0;
/// A head awaited, none of it read yet.
const WAITING: u64 = u64::MAX;

/// When the head being read on one connection is due. One word: [`IDLE`],
/// [`WAITING`], or the deadline as nanoseconds after `base`, plus one.
pub struct HeadClock {
    base: Instant,
    timeout: Duration,
    state: AtomicU64,
}

impl HeadClock {
    /// A connection that started at `base`, whose heads get `timeout`.
    pub fn new(base: Instant, timeout: Duration) -> Arc<HeadClock> {
        Arc::new(HeadClock {
            base,
            timeout,
            state: AtomicU64::new(IDLE),
        })
    }

    fn encode(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos).unwrap_or(WAITING - 1).min(WAITING - 2) + 1
    }

    /// A head is awaited now: due at `due` (a connection's first), or
    /// `header_timeout` after its first byte.
    pub fn await_head(&self, due: Option<Instant>) {
        let state = due.map_or(WAITING, |d| self.encode(d));
        self.state.store(state, Ordering::Relaxed);
    }

    /// The head is parsed: nothing is due until the next one is awaited.
    pub fn head_done(&self) {
        self.state.store(IDLE, Ordering::Relaxed);
    }

    /// Bytes arrived at `now`: if they are the first of an awaited head, its
    /// deadline starts.
    fn bytes_read(&self, now: Instant) {
        let due = self.encode(now + self.timeout);
        let _ = self
            .state
            .compare_exchange(WAITING, due, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When the awaited head is due, once its deadline runs.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state.load(Ordering::Relaxed) {
            IDLE | WAITING => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }
}

/// What the connection loop hands each HTTP/1 session (as pingora's
/// connection user context), for the proxy to mark its head done.
pub struct HeadMark(pub Arc<HeadClock>);

impl HeadMark {
    /// Marks the head done, if `context` is a [`HeadMark`].
    pub fn done(context: Box<dyn std::any::Any + Send + Sync>) {
        if let Ok(mark) = context.downcast::<HeadMark>() {
            mark.0.head_done();
        }
    }
}

/// Runs `request` (pingora's handling of one HTTP/1 request) unless its head
/// is late: `None` then, the request's task dropped with its connection.
pub async fn within_head_deadline<F, T>(clock: &HeadClock, request: F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    Deadline {
        clock,
        request: std::pin::pin!(request),
        sleep: None,
    }
    .await
}

struct Deadline<'a, F> {
    clock: &'a HeadClock,
    request: Pin<&'a mut F>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F, T> Future for Deadline<'_, F>
where
    F: Future<Output = Option<T>>,
{
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.request.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // The deadline only changes while `request` is polled (a read under
        // it, pingora parsing a head), so checking after each poll suffices.
        let Some(due) = this.clock.deadline() else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.deadline() != due {
            sleep.as_mut().reset(due);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("client request head not in within header_timeout: closing");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An HTTP/1 client connection's stream, telling its [`HeadClock`] when bytes
/// arrive. Everything else passes through.
pub struct HeadWatch {
    inner: Stream,
    clock: Arc<HeadClock>,
}

impl HeadWatch {
    pub fn new(inner: Stream, clock: Arc<HeadClock>) -> HeadWatch {
        HeadWatch { inner, clock }
    }
}

impl AsyncRead for HeadWatch {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.bytes_read(Instant::now());
        }
        polled
    }
}

crate::wrapped_stream::delegate_to_inner!(HeadWatch);

#[async_trait::async_trait]
impl Peek for HeadWatch {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for HeadWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadWatch")
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn a_first_head_is_due_at_its_deadline_a_later_one_from_its_first_byte() {
        let start = Instant::now();
        let clock = HeadClock::new(start, T);
        assert_eq!(clock.deadline(), None);
        let due = start + Duration::from_millis(1500);
        clock.await_head(Some(due));
        clock.bytes_read(start + Duration::from_secs(1));
        assert_eq!(clock.deadline(), Some(due), "bytes do not move it");
        clock.head_done();
        clock.bytes_read(start + Duration::from_secs(3));
        assert_eq!(clock.deadline(), None, "body bytes start nothing");
        // A reused connection: nothing is due until the head's first byte.
        clock.await_head(None);
        assert_eq!(clock.deadline(), None);
        let first = start + Duration::from_secs(60);
        clock.bytes_read(first);
        assert_eq!(clock.deadline(), Some(first + T));
        clock.bytes_read(first + Duration::from_secs(1));
        assert_eq!(
            clock.deadline(),
            Some(first + T),
            "later bytes do not move it"
        );
        clock.head_done();
        assert_eq!(clock.deadline(), None);
    }

    #[tokio::test]
    async fn a_late_head_drops_the_request_and_a_parsed_one_never_does() {
        let t = Duration::from_millis(200);
        let clock = HeadClock::new(Instant::now(), t);
        clock.await_head(Some(Instant::now() + t));
        let never = std::future::pending::<Option<()>>();
        let started = Instant::now();
        assert_eq!(within_head_deadline(&clock, never).await, None);
        let took = started.elapsed();
        assert!(took >= t && took < 5 * t, "{took:?}");

        // Parsed in time: the request runs on past the deadline.
        clock.await_head(None);
        clock.bytes_read(Instant::now());
        let request = async {
            clock.head_done();
            tokio::time::sleep(2 * t).await;
            Some(7)
        };
        assert_eq!(within_head_deadline(&clock, request).await, Some(7));
    }
}
