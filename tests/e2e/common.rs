//! Harness for the black-box end-to-end tests: a recording upstream, the real
//! `persona-guard` binary under a generated configuration, a raw HTTP/1.1
//! client and an independent implementation of Persona's signing scheme.

#![allow(dead_code)]

use std::convert::Infallible;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use sha2::Sha256;

pub const BIN: &str = env!("CARGO_BIN_EXE_persona-guard");

/// The binary under test: `PERSONA_GUARD_BIN` when set (to run the suite
/// against another build, e.g. an older release), else this crate's.
pub fn bin() -> String {
    std::env::var("PERSONA_GUARD_BIN").unwrap_or_else(|_| BIN.to_string())
}
pub const ROUTE: &str = "/webhooks/persona";
pub const DEFAULT_UPSTREAM_BODY: &[u8] = br#"{"received":true,"by":"e2e-upstream"}"#;
pub const TRUSTED_TYPE: &str = "x-persona-event-type";
pub const TRUSTED_ID: &str = "x-persona-event-id";
pub const TRUSTED_CREATED_AT: &str = "x-persona-event-created-at";
pub const CREATED_AT: &str = "2026-11-26T10:00:00.000Z";

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A string unique across tests, processes and runs.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{n}x{nanos:08x}", std::process::id())
}

pub fn event_id() -> String {
    unique("evt_e2e")
}

pub fn secret() -> String {
    unique("wbhsec_e2eSecret")
}

/// Polls `cond` every 10 ms until it holds or `deadline` has passed.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A port that was free a moment ago. Ports for the proxy are taken below
/// the kernel's ephemeral range (32768 and up on Linux), from a per-process
/// sequence, so that neither the upstreams (bound on port 0) nor client
/// sockets of parallel tests can take a port between its choice and the
/// proxy's bind. Falls back to an ephemeral port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    let base = (std::process::id() as u64 * 7919) % SPAN;
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (LOW + (base + n) % SPAN) as u16;
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    StdTcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// Signing (independent of the crate)
// ---------------------------------------------------------------------------

/// Hex HMAC-SHA256 of `<t>.<body>` keyed with the secret's raw bytes.
pub fn hmac_hex(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac accepts any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A `Persona-Signature` value with one set.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hmac_hex(secret, t, body))
}

/// A realistic Persona JSON:API event.
pub fn event_body(id: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "type": "event",
            "id": id,
            "attributes": {
                "name": name,
                "created-at": CREATED_AT,
                "redacted-at": null,
                "payload": {
                    "data": {
                        "type": "inquiry",
                        "id": "inq_e2eQ6qfY2K9xkmT3NwfhVn8",
                        "attributes": {
                            "status": "approved",
                            "reference-id": "user-4242",
                            "name-first": "Jane",
                            "name-last": "Doe",
                            "birthdate": "1990-01-01",
                            "created-at": "2026-11-26T09:58:12.000Z",
                            "completed-at": "2026-11-26T09:59:40.000Z"
                        },
                        "relationships": {
                            "template": {"data": {"type": "template", "id": "tmpl_e2eABC"}}
                        }
                    },
                    "included": []
                }
            }
        }
    }))
    .unwrap()
}

/// An event whose payload carries `filler` so that the whole body is about `size` bytes.
pub fn big_event_body(id: &str, name: &str, size: usize) -> Vec<u8> {
    let base = event_body(id, name).len() + 64;
    let n = size.saturating_sub(base);
    let filler: String = (0..n)
        .map(|i| {
            let c = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                [(i * 7 + i / 61) % 62];
            c as char
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "type": "event",
            "id": id,
            "attributes": {
                "name": name,
                "created-at": CREATED_AT,
                "payload": {"data": {"type": "document", "id": "doc_e2e", "attributes": {"front-photo": filler}}}
            }
        }
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------
// Raw requests
// ---------------------------------------------------------------------------

/// Builds `METHOD target HTTP/1.1` with a Host header, the given headers,
/// a Content-Length (for a non-empty body or a POST) and the body.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: e2e.test\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The head of a chunked request (no body bytes).
pub fn chunked_head(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: e2e.test\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    out.into_bytes()
}

/// Chunk-encodes `body` in chunks of `chunk` bytes, with the terminating chunk.
/// The head of a delivery to the route, signed now, whose body follows chunked.
pub fn signed_chunked_head(secret: &str, body: &[u8]) -> Vec<u8> {
    let sig = sign(secret, now(), body);
    chunked_head(
        "POST",
        ROUTE,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", &sig),
        ],
    )
}

pub fn chunk_encode(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk * 8 + 8);
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A signed delivery of `body` to `path`.
pub fn delivery(path: &str, signature: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Persona-Signature", signature),
            ("Persona-Webhook-Attempts-Made", "1"),
            ("Persona-Webhook-Attempts-Left", "5"),
        ],
        body,
    )
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("error")?
            .as_str()
            .map(str::to_owned)
    }

    /// Asserts a JSON error response `{"error": code, "message": ...}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got {} {:?} body {}",
            self.status,
            self.headers,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.to_ascii_lowercase().starts_with("application/json"),
            "error response content-type should be application/json, got {ct:?}"
        );
        let v = self.json();
        assert_eq!(v["error"], code, "error code in {}", self.text());
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body needs a human message: {}",
            self.text()
        );
    }

    pub fn assert_status_json(&self, status: u16, field: &str) {
        assert_eq!(self.status, status, "body {}", self.text());
        assert_eq!(self.json()["status"], field, "body {}", self.text());
    }

    pub fn connection_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Whether the peer sent EOF while the last response was read.
    pub eof: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write request: {e}"));
    }

    /// Writes, tolerating the peer having closed (returns false then).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response, 1xx included.
    pub fn try_read_any(&mut self) -> Result<Response, String> {
        // Head.
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (r.code.unwrap_or(0), headers, len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(format!(
                        "unparsable response ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
            }
            match self.fill() {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a complete response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "read error before a complete response head: {e} (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
            }
        };
        self.buf.drain(..head_len);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = self.read_chunked()?;
        } else if let Some(cl) = resp.header("content-length") {
            let cl: usize = cl
                .trim()
                .parse()
                .map_err(|e| format!("bad content-length {cl:?}: {e}"))?;
            while self.buf.len() < cl {
                match self.fill() {
                    Ok(0) => return Err("connection closed inside the response body".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read error inside the response body: {e}")),
                }
            }
            resp.body = self.buf.drain(..cl).collect();
        } else {
            // Until close.
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                    Err(e) => return Err(format!("read error in a close-delimited body: {e}")),
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                match self.fill() {
                    Ok(0) => return Err("closed inside a chunk size line".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read error in chunked body: {e}")),
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let p = loop {
                        if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break p;
                        }
                        match self.fill() {
                            Ok(0) => return Err("closed inside chunked trailers".into()),
                            Ok(_) => {}
                            Err(e) => return Err(format!("read error in trailers: {e}")),
                        }
                    };
                    self.buf.drain(..p + 2);
                    if p == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                match self.fill() {
                    Ok(0) => return Err("closed inside a chunk".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read error in a chunk: {e}")),
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Reads the final response, skipping interim (1xx) ones.
    pub fn try_read_response(&mut self) -> Result<Response, String> {
        loop {
            let r = self.try_read_any()?;
            if !(100..200).contains(&r.status) {
                return Ok(r);
            }
        }
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    pub fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response()
    }

    /// True when the peer closes the connection (EOF or reset) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        if self.eof {
            return true;
        }
        if !self.buf.is_empty() {
            return false;
        }
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 4096];
            let r = self.stream.read(&mut tmp);
            self.stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            match r {
                Ok(0) => {
                    self.eof = true;
                    return true;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return false;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// Sends `head`, then streams `body` from a helper thread while the
    /// response is read, so that a server answering early (413, 401) is seen
    /// even if it stops reading. Returns the response or the read error.
    pub fn send_streaming(
        &mut self,
        head: &[u8],
        body: Vec<u8>,
        piece: usize,
    ) -> Result<Response, String> {
        self.send(head);
        let mut writer = self.stream.try_clone().expect("clone socket");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_w = done.clone();
        let t = thread::spawn(move || {
            for p in body.chunks(piece) {
                if done_w.load(Ordering::SeqCst) || writer.write_all(p).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(2));
            }
        });
        let r = self.try_read_response();
        done.store(true, Ordering::SeqCst);
        let _ = t.join();
        r
    }
}

/// One request on a fresh connection.
pub fn one_shot(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.request(raw)
}

// ---------------------------------------------------------------------------
// Scripted raw upstream
// ---------------------------------------------------------------------------

/// What the scripted upstream was sent: each request's head and body.
pub type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// One answer of a [`ScriptedUpstream`].
pub enum Reply {
    /// These bytes; a `Connection: close` in them closes the socket after.
    Raw(Vec<u8>),
    /// These bytes, then the socket is closed: a response cut short.
    Cut(Vec<u8>),
    /// `count` interim heads, one every `every`, then these bytes.
    Interim {
        head: Vec<u8>,
        every: Duration,
        count: usize,
        then: Vec<u8>,
    },
}

/// An upstream that answers each request with the next of a list of raw
/// responses, on keep-alive connections, and records what it was sent.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    seen: Seen,
}

impl ScriptedUpstream {
    pub fn start(responses: Vec<Vec<u8>>) -> ScriptedUpstream {
        Self::start_with(responses.into_iter().map(Reply::Raw).collect())
    }

    pub fn start_with(replies: Vec<Reply>) -> ScriptedUpstream {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let script = Arc::new(Mutex::new(replies.into_iter()));
        let seen_t = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(s) = conn else { return };
                let (seen, script) = (seen_t.clone(), script.clone());
                thread::spawn(move || Self::serve(s, &seen, &script));
            }
        });
        ScriptedUpstream { addr, seen }
    }

    fn serve(mut s: TcpStream, seen: &Seen, script: &Mutex<std::vec::IntoIter<Reply>>) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 65536];
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let body = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            seen.lock().unwrap().push((head, body));
            let Some(reply) = script.lock().unwrap().next() else {
                return;
            };
            let last = match reply {
                Reply::Raw(bytes) => bytes,
                Reply::Cut(bytes) => {
                    let _ = s.write_all(&bytes);
                    return;
                }
                Reply::Interim {
                    head,
                    every,
                    count,
                    then,
                } => {
                    for _ in 0..count {
                        if s.write_all(&head).is_err() {
                            return;
                        }
                        thread::sleep(every);
                    }
                    then
                }
            };
            if s.write_all(&last).is_err() {
                return;
            }
            if String::from_utf8_lossy(&last)
                .to_ascii_lowercase()
                .contains("connection: close")
            {
                return;
            }
        }
    }

    pub fn seen(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// Recording upstream
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    /// Lower-case names, in received order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    /// Headers whose name, with `_` read as `-`, matches `name` case-insensitively.
    pub fn header_variants(&self, name: &str) -> Vec<(String, String)> {
        let want = name.to_ascii_lowercase().replace('_', "-");
        self.headers
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase().replace('_', "-") == want)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct Behaviour {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

struct UpstreamState {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
    heads: AtomicUsize,
    conns: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
    state: Arc<UpstreamState>,
    acceptor: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let state = Arc::new(UpstreamState {
            behaviour: Mutex::new(Behaviour {
                status: 200,
                body: DEFAULT_UPSTREAM_BODY.to_vec(),
                delay: Duration::ZERO,
            }),
            requests: Mutex::new(Vec::new()),
            heads: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let listener = rt
            .block_on(async { tokio::net::TcpListener::bind("127.0.0.1:0").await })
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let mut up = Upstream {
            addr,
            rt: Some(rt),
            state,
            acceptor: None,
        };
        up.serve(listener);
        up
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().unwrap()
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let handle = self.rt().spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let st = state.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            st.heads.fetch_add(1, Ordering::SeqCst);
                            let method = req.method().to_string();
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_else(|| req.uri().to_string());
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let body = match req.into_body().collect().await {
                                Ok(b) => b.to_bytes().to_vec(),
                                Err(_) => b"<<body read error>>".to_vec(),
                            };
                            st.requests.lock().unwrap().push(Recorded {
                                method,
                                target,
                                headers,
                                body,
                            });
                            let b = st.behaviour.lock().unwrap().clone();
                            if !b.delay.is_zero() {
                                tokio::time::sleep(b.delay).await;
                            }
                            let resp = hyper::Response::builder()
                                .status(b.status)
                                .header("content-type", "application/json")
                                .header("x-e2e-upstream", "yes")
                                .body(Full::new(Bytes::from(b.body)))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
                let mut conns = state.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn);
            }
        });
        self.acceptor = Some(handle);
    }

    pub fn set_status(&self, status: u16) {
        self.state.behaviour.lock().unwrap().status = status;
    }

    pub fn set_body(&self, body: &[u8]) {
        self.state.behaviour.lock().unwrap().body = body.to_vec();
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.behaviour.lock().unwrap().delay = delay;
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        let rt = self.rt.as_ref().unwrap();
        if let Some(a) = self.acceptor.take() {
            a.abort();
            let _ = rt.block_on(a);
        }
        let conns: Vec<_> = std::mem::take(&mut *self.state.conns.lock().unwrap());
        for c in conns {
            c.abort();
            let _ = rt.block_on(c);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.acceptor.is_none(), "restart() without stop()");
        let addr = self.addr;
        let listener = self
            .rt()
            .block_on(async move {
                let end = Instant::now() + Duration::from_secs(10);
                loop {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.set_reuseaddr(true)?;
                    match sock.bind(addr).and_then(|_| sock.listen(1024)) {
                        Ok(l) => return Ok::<_, std::io::Error>(l),
                        Err(e) if Instant::now() < end => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
            .expect("rebind upstream on its port");
        self.serve(listener);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Request heads seen (even when the body was never completed).
    pub fn heads(&self) -> usize {
        self.state.heads.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` complete requests were recorded.
    pub fn wait_for_requests(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        if !wait_until(deadline, || self.count() >= n) {
            panic!(
                "upstream expected {n} request(s) within {deadline:?}, got {}: {:?}",
                self.count(),
                self.requests()
            );
        }
        self.requests()
    }

    pub fn assert_nothing_seen(&self, ctx: &str) {
        assert_eq!(
            self.heads(),
            0,
            "{ctx}: upstream should have seen nothing, saw {:?}",
            self.requests()
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------

#[derive(Clone)]
pub struct ProxyBuilder {
    pub upstream: Option<SocketAddr>,
    pub unmatched: Option<String>,
    pub connect_timeout: String,
    pub read_timeout: String,
    pub ttl: String,
    pub capacity: u64,
    pub tolerance: String,
    pub max_body: String,
    pub events: Option<Vec<String>>,
    pub secrets: Vec<String>,
    pub route_path: String,
    pub extra_toml: String,
    /// Top-level keys, written before any table.
    pub top_toml: String,
    /// Extra lines in the [replay] table.
    pub replay_toml: String,
    /// Extra lines in the [listen] table.
    pub listen_toml: String,
    /// Extra lines in the [upstream] table.
    pub upstream_toml: String,
    /// The upstream address exactly as written (e.g. with https://).
    pub upstream_literal: Option<String>,
    pub redis_url: Option<String>,
    pub env: Vec<(String, String)>,
}

pub fn proxy() -> ProxyBuilder {
    ProxyBuilder {
        upstream: None,
        unmatched: None,
        connect_timeout: "1s".into(),
        read_timeout: "5s".into(),
        ttl: "15m".into(),
        capacity: 100_000,
        tolerance: "5m".into(),
        max_body: "1MiB".into(),
        events: None,
        secrets: vec![secret()],
        route_path: ROUTE.into(),
        extra_toml: String::new(),
        top_toml: String::new(),
        replay_toml: String::new(),
        listen_toml: String::new(),
        upstream_toml: String::new(),
        upstream_literal: None,
        redis_url: None,
        env: Vec::new(),
    }
}

impl ProxyBuilder {
    pub fn upstream(mut self, up: &Upstream) -> Self {
        self.upstream = Some(up.addr);
        self
    }
    pub fn upstream_addr(mut self, a: SocketAddr) -> Self {
        self.upstream = Some(a);
        self
    }
    pub fn unmatched(mut self, v: &str) -> Self {
        self.unmatched = Some(v.into());
        self
    }
    pub fn read_timeout(mut self, v: &str) -> Self {
        self.read_timeout = v.into();
        self
    }
    pub fn connect_timeout(mut self, v: &str) -> Self {
        self.connect_timeout = v.into();
        self
    }
    pub fn tolerance(mut self, v: &str) -> Self {
        self.tolerance = v.into();
        self
    }
    pub fn ttl(mut self, v: &str) -> Self {
        self.ttl = v.into();
        self
    }
    pub fn capacity(mut self, v: u64) -> Self {
        self.capacity = v;
        self
    }
    pub fn max_body(mut self, v: &str) -> Self {
        self.max_body = v.into();
        self
    }
    pub fn events(mut self, v: &[&str]) -> Self {
        self.events = Some(v.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn secrets(mut self, v: Vec<String>) -> Self {
        self.secrets = v;
        self
    }
    pub fn extra_toml(mut self, v: &str) -> Self {
        self.extra_toml.push_str(v);
        self
    }
    /// Use the Redis replay store at `url`.
    pub fn redis(mut self, url: &str) -> Self {
        self.redis_url = Some(url.into());
        self
    }
    pub fn listen_toml(mut self, v: &str) -> Self {
        self.listen_toml.push_str(v);
        self
    }
    pub fn upstream_toml(mut self, v: &str) -> Self {
        self.upstream_toml.push_str(v);
        self
    }
    pub fn upstream_literal(mut self, v: &str) -> Self {
        self.upstream_literal = Some(v.into());
        self
    }
    pub fn replay_toml(mut self, v: &str) -> Self {
        self.replay_toml.push_str(v);
        self
    }
    pub fn top_toml(mut self, v: &str) -> Self {
        self.top_toml.push_str(v);
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn secret_env_name(i: usize) -> String {
        if i == 0 {
            "PERSONA_WEBHOOK_SECRET".into()
        } else {
            format!("PERSONA_WEBHOOK_SECRET_{i}")
        }
    }

    pub fn toml(&self, listen: u16, admin: u16) -> String {
        let upstream = self.upstream_literal.clone().unwrap_or_else(|| {
            self.upstream
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()))
        });
        let mut s = self.top_toml.clone();
        if let Some(u) = &self.unmatched {
            s.push_str(&format!("unmatched = \"{u}\"\n"));
        }
        s.push_str(&format!(
            "\n[listen]\naddress = \"127.0.0.1:{listen}\"\n{}\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\n\
             [upstream]\naddress = \"{upstream}\"\nconnect_timeout = \"{}\"\nread_timeout = \"{}\"\n{}\n\
             [replay]\nttl = \"{}\"\ncapacity = {}\n",
            self.listen_toml,
            self.connect_timeout,
            self.read_timeout,
            self.upstream_toml,
            self.ttl,
            self.capacity
        ));
        match &self.redis_url {
            Some(url) => s.push_str(&format!("store = \"redis\"\nredis_url = \"{url}\"\n")),
            None => s.push_str("store = \"memory\"\n"),
        }
        s.push_str(&self.replay_toml);
        s.push('\n');
        let secrets: Vec<String> = (0..self.secrets.len())
            .map(|i| format!("\"env:{}\"", Self::secret_env_name(i)))
            .collect();
        s.push_str(&format!(
            "[[route]]\npath = \"{}\"\nsecrets = [{}]\ntolerance = \"{}\"\nmax_body = \"{}\"\n",
            self.route_path,
            secrets.join(", "),
            self.tolerance,
            self.max_body
        ));
        if let Some(ev) = &self.events {
            let ev: Vec<String> = ev.iter().map(|e| format!("\"{e}\"")).collect();
            s.push_str(&format!("events = [{}]\n", ev.join(", ")));
        }
        s.push('\n');
        s.push_str(&self.extra_toml);
        s
    }

    pub fn start(self) -> Proxy {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match self.try_start() {
                Ok(p) => return p,
                Err(e) => {
                    let lower = e.to_ascii_lowercase();
                    if lower.contains("in use") || lower.contains("addrinuse") {
                        last_err = e;
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!("proxy could not bind after 3 attempts: {last_err}");
    }

    fn try_start(&self) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = free_port();
        let mut admin = free_port();
        while admin == listen {
            admin = free_port();
        }
        let config = dir.path().join("persona-guard.toml");
        fs::write(&config, self.toml(listen, admin)).unwrap();
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        for (i, s) in self.secrets.iter().enumerate() {
            cmd.env(Self::secret_env_name(i), s);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin()))?;
        let mut p = Proxy {
            child: Some(child),
            dir,
            config,
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            secrets: self.secrets.clone(),
            stdout_path,
            stderr_path,
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "persona-guard exited early with {status}\nconfig:\n{}\nstderr:\n{}\nstdout:\n{}",
                    fs::read_to_string(&p.config).unwrap_or_default(),
                    p.stderr(),
                    p.stdout()
                ));
            }
            if p.healthz_ok()
                && TcpStream::connect_timeout(&p.listen, Duration::from_millis(200)).is_ok()
            {
                // Still alive once both answer (the port is not someone else's).
                thread::sleep(Duration::from_millis(50));
                if p.child.as_mut().unwrap().try_wait().unwrap().is_none() {
                    return Ok(p);
                }
                continue;
            }
            if Instant::now() >= end {
                panic!(
                    "persona-guard not ready within 20 s (healthz on {} and listen on {})\nstderr:\n{}",
                    p.admin,
                    p.listen,
                    p.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Proxy {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub secrets: Vec<String>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Proxy {
    fn healthz_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")
    }

    pub fn secret(&self) -> &str {
        &self.secrets[0]
    }

    pub fn client(&self) -> Client {
        Client::connect(self.listen)
    }

    pub fn send(&self, raw: &[u8]) -> Response {
        one_shot(self.listen, raw)
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send(&request("POST", path, headers, body))
    }

    /// A genuine delivery of `body` to the route, signed now with the first secret.
    pub fn deliver(&self, body: &[u8]) -> Response {
        self.send(&delivery(ROUTE, &sign(self.secret(), now(), body), body))
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!("{}\n{}", self.stdout(), self.stderr())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (e.g. "HUP") to this child, by its own PID.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }

    /// The admin /metrics text.
    pub fn metrics(&self) -> String {
        one_shot(self.admin, &request("GET", "/metrics", &[], b"")).text()
    }

    /// The value of one metric sample (`name{labels}` exactly as exported), if exported.
    pub fn metric_opt(&self, series: &str) -> Option<f64> {
        Self::sample(&self.metrics(), series)
    }

    fn sample(scrape: &str, series: &str) -> Option<f64> {
        scrape.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The value of one metric sample (`name{labels}` exactly as exported).
    /// Panics when the series is absent: a pre-registered series exports 0.
    pub fn metric(&self, series: &str) -> f64 {
        let scrape = self.metrics();
        Self::sample(&scrape, series)
            .unwrap_or_else(|| panic!("metric series {series} is absent from /metrics:\n{scrape}"))
    }

    /// Like [`Proxy::metric`], but 0 when the series is absent. Only for series
    /// that are legitimately not exported until first counted.
    pub fn metric_or_zero(&self, series: &str) -> f64 {
        self.metric_opt(series).unwrap_or(0.0)
    }

    /// Sends SIGTERM to this child (by its PID) and waits for it to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Other subcommands
// ---------------------------------------------------------------------------

pub fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn persona-guard");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(input).unwrap();
        drop(si);
    }
    // Bounded wait.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "persona-guard {args:?} did not exit within 30 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
