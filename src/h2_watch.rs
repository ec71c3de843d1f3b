//! Request-head deadlines on a server-side HTTP/2 connection, kept at the frame
//! level underneath pingora's HTTP/2 codec.
//!
//! pingora 0.9.1 runs the HTTP/2 handshake (`h2::server::handshake`, from
//! `pingora-core` `src/apps/mod.rs`, `ServerApp::process_new` for every
//! `HttpServerApp`) and the stream accept loop
//! (`protocols/http/v2/server.rs`, `accept_downstream_sessions`) with no time
//! bound of their own: a client that negotiates `h2` and sends nothing, or only
//! part of a header block, holds its connection for ever. pingora bounds only
//! the idle time between streams (`HttpServerOptions::h2_idle_timeout`), which
//! `server.rs` sets from `idle_timeout`. What is left is done here, on the bytes
//! the codec reads:
//!
//! * [`H2Watch::read_preface`] waits (under the caller's deadline) for the
//!   client's connection preface and its first frame (SETTINGS) before the
//!   codec sees a byte, then replays them to it;
//! * afterwards, reads fail with `TimedOut` once a request head is late: the
//!   connection's first complete header block must arrive by the connection's
//!   deadline (`header_timeout` after accept, like an HTTP/1 connection's first
//!   head), and any later header block (HEADERS, CONTINUATION up to
//!   END_HEADERS) must complete within `header_timeout` of its first frame.
//!   The codec then drops the connection.
//!
//! Only frame headers are parsed (9 bytes each, every payload is skipped), so
//! the cost is a few comparisons per frame.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::protocols::{Peek, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// RFC 9113 §3.4.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
/// The largest first frame waited for before the codec takes over (the default
/// SETTINGS_MAX_FRAME_SIZE; the codec refuses anything larger anyway).
const MAX_FIRST_FRAME: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of the preface read so far.
    Preface(usize),
    /// A frame head being read.
    Head([u8; FRAME_HEAD], usize),
    /// Payload bytes left in the current frame; whether it ends a header block.
    Payload(usize, bool),
}

/// Follows a client's HTTP/2 byte stream frame by frame and says when a request
/// head is due.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    /// Frames completed (the preface not counted).
    frames: u64,
    bad_preface: bool,
    timeout: Duration,
    /// When the head being waited for is due; `None` while no head is awaited.
    deadline: Option<Instant>,
}

impl Scanner {
    /// A new connection, whose first request head is due at `deadline`; later
    /// header blocks get `timeout` each.
    pub fn new(deadline: Instant, timeout: Duration) -> Scanner {
        Scanner {
            state: State::Preface(0),
            frames: 0,
            bad_preface: false,
            timeout,
            deadline: Some(deadline),
        }
    }

    /// When the connection must be dropped unless the awaited head completes.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The preface did not match: not an HTTP/2 client.
    pub fn bad_preface(&self) -> bool {
        self.bad_preface
    }

    /// The preface and the first frame are in (or the preface was wrong).
    pub fn handshake_read(&self) -> bool {
        self.frames > 0 || self.bad_preface
    }

    /// Takes the next bytes read from the client at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Preface(got) => {
                    let take = (PREFACE.len() - *got).min(bytes.len());
                    if bytes[..take] != PREFACE[*got..*got + take] {
                        self.bad_preface = true;
                    }
                    *got += take;
                    bytes = &bytes[take..];
                    if *got == PREFACE.len() {
                        self.state = State::Head([0; FRAME_HEAD], 0);
                    }
                }
                State::Head(head, got) => {
                    let take = (FRAME_HEAD - *got).min(bytes.len());
                    head[*got..*got + take].copy_from_slice(&bytes[..take]);
                    *got += take;
                    bytes = &bytes[take..];
                    if *got == FRAME_HEAD {
                        let head = *head;
                        self.frame_head(&head, now);
                    }
                }
                State::Payload(left, _) => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.frame_done();
                    }
                }
            }
        }
    }

    fn frame_head(&mut self, head: &[u8; FRAME_HEAD], now: Instant) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let starts_block = kind == HEADERS || kind == PUSH_PROMISE;
        if starts_block && self.deadline.is_none() {
            self.deadline = Some(now + self.timeout);
        }
        let ends_block = (starts_block || kind == CONTINUATION) && flags & END_HEADERS != 0;
        self.state = State::Payload(len, ends_block);
        if len == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if let State::Payload(_, true) = self.state {
            // A head is complete: nothing is awaited until the next one starts
            // (between requests the idle timeout applies, in pingora).
            self.deadline = None;
        }
        self.frames += 1;
        self.state = State::Head([0; FRAME_HEAD], 0);
    }

    /// How many bytes after the preface the first frame may take before the
    /// handshake wait gives up and hands over to the codec.
    fn first_frame_limit() -> usize {
        PREFACE.len() + FRAME_HEAD + MAX_FIRST_FRAME
    }
}

/// A server-side HTTP/2 connection whose reads enforce the [`Scanner`]'s
/// deadlines. Everything else passes through to the stream underneath.
pub struct H2Watch {
    inner: Stream,
    /// Bytes read by [`Self::read_preface`], handed to the codec first.
    replay: Vec<u8>,
    replayed: usize,
    scan: Scanner,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl H2Watch {
    pub fn new(inner: Stream, deadline: Instant, header_timeout: Duration) -> H2Watch {
        H2Watch {
            inner,
            replay: Vec::new(),
            replayed: 0,
            scan: Scanner::new(deadline, header_timeout),
            sleep: None,
        }
    }

    /// Reads the client's preface and first frame (kept for the codec). The
    /// caller bounds it in time. `Ok(false)`: not an HTTP/2 client, or it left.
    pub async fn read_preface(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        while !self.scan.handshake_read() && self.replay.len() < Scanner::first_frame_limit() {
            let n = self.inner.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            self.scan.feed(&buf[..n], Instant::now());
            self.replay.extend_from_slice(&buf[..n]);
        }
        Ok(!self.scan.bad_preface())
    }

    fn late(&self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "HTTP/2 request head not in time")
    }
}

impl AsyncRead for H2Watch {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let n = (this.replay.len() - this.replayed).min(buf.remaining());
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let now = Instant::now();
        if this.scan.deadline().is_some_and(|d| now >= d) {
            return Poll::Ready(Err(this.late()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.scan.feed(&buf.filled()[before..], Instant::now());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.scan.deadline() else {
                    return Poll::Pending;
                };
                // Wake the codec's task at the deadline, so the next read fails.
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.late())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

crate::wrapped_stream::delegate_to_inner!(H2Watch);

/// Peeking is used by pingora only to detect cleartext HTTP/2; not needed here.
#[async_trait::async_trait]
impl Peek for H2Watch {}

impl fmt::Debug for H2Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Watch")
            .field("inner", &self.inner)
            .field("scan", &self.scan)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 6)
    }

    #[test]
    fn the_first_head_is_due_at_the_connection_deadline() {
        let start = Instant::now();
        let due = start + T;
        let mut s = Scanner::new(due, T);
        assert_eq!(s.deadline(), Some(due));
        s.feed(&PREFACE[..10], start);
        assert!(!s.handshake_read());
        s.feed(&PREFACE[10..], start);
        assert!(!s.handshake_read());
        s.feed(&settings(), start);
        assert!(s.handshake_read() && !s.bad_preface());
        assert_eq!(s.deadline(), Some(due), "SETTINGS is not a request head");
        // HEADERS without END_HEADERS, then CONTINUATION with it, byte by byte.
        let later = start + Duration::from_secs(3);
        let mut bytes = frame(HEADERS, 0x1, 5);
        bytes.extend(frame(CONTINUATION, END_HEADERS, 3));
        let last = bytes.len() - 1;
        for b in &bytes[..last] {
            s.feed(std::slice::from_ref(b), later);
            assert_eq!(
                s.deadline(),
                Some(due),
                "the first head keeps the connection's deadline"
            );
        }
        s.feed(&bytes[last..], later);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn each_later_header_block_gets_its_own_timeout() {
        let start = Instant::now();
        let mut s = Scanner::new(start + T, T);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings());
        bytes.extend(frame(HEADERS, END_HEADERS | 0x1, 12));
        s.feed(&bytes, start);
        assert_eq!(s.deadline(), None);
        // Other frames, even empty ones, do not start a wait.
        let t1 = start + Duration::from_secs(30);
        s.feed(&frame(0x6, 0, 8), t1); // PING
        s.feed(&frame(0x4, 0x1, 0), t1); // SETTINGS ack
        s.feed(&frame(0x0, 0x1, 100), t1); // DATA
        assert_eq!(s.deadline(), None);
        // A new header block, cut in its frame head: due `T` after it starts.
        let t2 = start + Duration::from_secs(60);
        let h = frame(HEADERS, 0, 4);
        s.feed(&h[..9], t2);
        assert_eq!(s.deadline(), Some(t2 + T));
        s.feed(&h[9..], t2);
        assert_eq!(s.deadline(), Some(t2 + T), "no END_HEADERS yet");
        s.feed(
            &frame(CONTINUATION, END_HEADERS, 0),
            t2 + Duration::from_secs(1),
        );
        assert_eq!(s.deadline(), None);
        // A zero-length HEADERS with END_HEADERS closes at once.
        s.feed(&frame(HEADERS, END_HEADERS, 0), t2);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_wrong_preface_is_noticed() {
        let start = Instant::now();
        let mut s = Scanner::new(start + T, T);
        s.feed(b"GET / HTTP/1.1\r\n", start);
        assert!(s.bad_preface() && s.handshake_read());
    }

    #[test]
    fn payload_lengths_use_all_24_bits() {
        let start = Instant::now();
        let mut s = Scanner::new(start + T, T);
        s.feed(PREFACE, start);
        let big = 0x01_02_03;
        s.feed(&frame(0x0, 0, big), start);
        assert_eq!(s.frames, 1);
        assert_eq!(s.state, State::Head([0; FRAME_HEAD], 0));
    }
}
