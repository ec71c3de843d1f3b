//! A raw HTTP/1.1 client: requests are built as bytes (so a test can send
//! anything, malformed included) and responses are read as they come.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a client waits for any one read or write by default.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

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
/// Where the head of `raw` ends (the index after its blank line).
pub fn head_len(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4
}

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
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Connects to `addr` from `local` (any port): on Linux every address in
    /// 127.0.0.0/8 is local, so a test can be two different clients.
    pub fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(local, 0).into())
            .unwrap_or_else(|e| panic!("bind {local}: {e}"));
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr} from {local}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
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
            self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
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
        let done = Arc::new(AtomicBool::new(false));
        let done_w = done.clone();
        let t = thread::spawn(move || {
            for p in body.chunks(piece) {
                if done_w.load(Ordering::SeqCst) || writer.write_all(p).is_err() {
                    return;
                }
                // Paced like a real sender, so that a server that answers
                // early does so while most of the body is still unsent.
                thread::sleep(Duration::from_millis(2));
            }
        });
        let r = self.try_read_response();
        done.store(true, Ordering::SeqCst);
        let _ = t.join();
        r
    }
}

/// How one request on a fresh connection ended (see [`try_attempt`]).
pub enum Attempt {
    /// No connection, or the request could not be written: the server
    /// cannot have acted on it.
    NotSent,
    /// Sent whole, but the connection ended before a whole answer: the
    /// server may have acted on it (a process killed mid-request).
    Unanswered,
    Answered(Response),
}

/// One request on a fresh connection, telling a request that never left
/// from one that was sent and went unanswered.
pub fn try_attempt(addr: SocketAddr, raw: &[u8]) -> Attempt {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return Attempt::NotSent;
    };
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return Attempt::NotSent;
    }
    let mut c = Client {
        stream,
        buf: Vec::new(),
        eof: false,
    };
    if !c.try_send(raw) {
        return Attempt::NotSent;
    }
    match c.try_read_response() {
        Ok(r) => Attempt::Answered(r),
        Err(_) => Attempt::Unanswered,
    }
}

/// One request on a fresh connection; `None` when the connection fails
/// (refused, reset, closed before a whole answer): a proxy being restarted.
pub fn try_one_shot(addr: SocketAddr, raw: &[u8]) -> Option<Response> {
    match try_attempt(addr, raw) {
        Attempt::Answered(r) => Some(r),
        Attempt::NotSent | Attempt::Unanswered => None,
    }
}

/// One request on a fresh connection.
pub fn one_shot(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.request(raw)
}
