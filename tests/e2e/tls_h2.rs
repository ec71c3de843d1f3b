//! HTTP/2 over TLS on the public listener: a delivery verified and forwarded, and
//! `header_timeout` and `idle_timeout` on HTTP/2 connections.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::harness::*;
use crate::tls::{H2Client, Pki, h2_connect, listen_tls};

#[test]
fn http2_client_delivery_is_verified_and_forwarded() {
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let (up, p) = rig_with(|b| b.apply(listen_tls(&leaf)));
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let (pki, addr) = (&pki, p.listen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |sig: String, body: Vec<u8>, spoof: bool| {
        rt.block_on(async move {
            let (mut client, _conn) = h2_connect(pki, addr).await;
            let mut req = http::Request::builder()
                .method("POST")
                .uri(format!("https://localhost:{}{ROUTE}?via=h2", addr.port()))
                .header("content-type", "application/json")
                .header("persona-signature", sig);
            if spoof {
                req = req.header("x-persona-event-id", "evt_spoofed");
            }
            let (resp, mut stream) = client.send_request(req.body(()).unwrap(), false).unwrap();
            stream.send_data(body.into(), true).unwrap();
            let resp = resp.await.unwrap();
            let status = resp.status().as_u16();
            let mut recv = resp.into_body();
            let mut out = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.unwrap();
                let _ = recv.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            (status, out)
        })
    };
    let (status, resp) = send(sig.clone(), body.clone(), true);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(resp, DEFAULT_UPSTREAM_BODY);
    let rec = &up.wait_for_requests(1, W)[0];
    assert_eq!(rec.body, body, "byte-identical over HTTP/2 too");
    assert_eq!(rec.target, format!("{ROUTE}?via=h2"));
    assert_eq!(rec.header_all(TRUSTED_ID), vec![id.as_str()]);
    assert_eq!(
        rec.header("host"),
        Some(format!("localhost:{}", addr.port()).as_str())
    );

    let (status, resp) = send(sig, body, false);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&resp).contains("duplicate"));
    assert_eq!(up.count(), 1);
}

// ---------------------------------------------------------------------------
// HTTP/2 connections: header_timeout and idle_timeout
// ---------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET path` for `localhost` as an HPACK block: static-table entries and
/// literals without indexing or Huffman coding.
fn hpack_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    for (name_index, value) in [(4u8, path), (1, "localhost")] {
        // :path, :authority
        block.push(name_index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A TLS connection to the listener with its handshake done, read frame by frame.
struct RawTls {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl RawTls {
    fn connect(pki: &Pki, addr: SocketAddr, alpn: &[u8]) -> RawTls {
        let cfg = pki.client_config(&[alpn]);
        let mut conn =
            rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(W)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        assert_eq!(conn.alpn_protocol(), Some(alpn), "ALPN");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        RawTls {
            tls: rustls::StreamOwned::new(conn, sock),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).unwrap();
        self.tls.flush().unwrap();
    }

    /// Reads what has come; false once the server has closed the connection.
    fn pump(&mut self) -> bool {
        let mut tmp = [0u8; 16384];
        match self.tls.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    /// Waits until `limit` after `since` for the server to close the
    /// connection; how long after `since` it did.
    fn closed_within(&mut self, since: Instant, limit: Duration) -> Option<Duration> {
        while since.elapsed() < limit {
            if !self.pump() {
                return Some(since.elapsed());
            }
        }
        None
    }

    /// The next frame (type, flags, stream, payload), waiting up to `limit`.
    fn frame(&mut self, limit: Duration) -> Option<(u8, u8, u32, Vec<u8>)> {
        let end = Instant::now() + limit;
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            if Instant::now() >= end || !self.pump() {
                return None;
            }
        }
    }
}

/// A TLS proxy with the given `header_timeout` and `idle_timeout`.
fn tls_proxy(pki: &Pki, header_timeout: &str, idle_timeout: &str) -> (Upstream, Proxy) {
    let leaf = pki.leaf("server");
    rig_with(|b| {
        b.apply(listen_tls(&leaf))
            .set("server.header_timeout", header_timeout)
            .set("server.idle_timeout", idle_timeout)
    })
}

/// Closed about `header_timeout` (1 s here) after the connection began.
fn assert_cut_at_header_timeout(what: &str, took: Option<Duration>, limit: Duration) {
    let took = took.unwrap_or_else(|| panic!("{what}: the connection is open after {limit:?}"));
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{what}: closed after {took:?}, header_timeout is 1s"
    );
}

#[test]
fn a_new_connection_gets_header_timeout_for_tls_the_h2_handshake_and_its_first_head() {
    let pki = Pki::new();
    let (up, p) = tls_proxy(&pki, "1s", "30s");
    let limit = Duration::from_secs(6);

    // TCP only: the TLS handshake never starts (pingora alone waits 60 s).
    let started = Instant::now();
    let mut tcp = TcpStream::connect(p.listen).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut took = None;
    while took.is_none() && started.elapsed() < limit {
        match tcp.read(&mut [0u8; 1024]) {
            Ok(0) => took = Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => took = Some(started.elapsed()),
        }
    }
    assert_cut_at_header_timeout("no TLS handshake", took, limit);

    let settings = h2_frame(SETTINGS, 0, 0, &[]);
    let cases: [(&str, &[u8], Vec<u8>); 5] = [
        ("h2 negotiated, then nothing", b"h2", vec![]),
        ("h2, only the connection preface", b"h2", PREFACE.to_vec()),
        (
            "h2, preface and SETTINGS, no request",
            b"h2",
            [PREFACE, &settings[..]].concat(),
        ),
        (
            "h2, a first HEADERS frame without END_HEADERS",
            b"h2",
            [
                PREFACE,
                &settings[..],
                &h2_frame(HEADERS, END_STREAM, 1, &[0x82]),
            ]
            .concat(),
        ),
        // HTTP/1 on the same listener, as before.
        ("http/1.1 negotiated, then nothing", b"http/1.1", vec![]),
    ];
    for (what, alpn, bytes) in cases {
        let started = Instant::now();
        let mut c = RawTls::connect(&pki, p.listen, alpn);
        if !bytes.is_empty() {
            c.send(&bytes);
        }
        assert_cut_at_header_timeout(what, c.closed_within(started, limit), limit);
    }
    up.assert_nothing_seen("connections without a complete request head");
}

#[test]
fn each_later_http2_request_head_must_complete_within_header_timeout() {
    let pki = Pki::new();
    let (up, p) = tls_proxy(&pki, "1s", "30s");
    let mut c = RawTls::connect(&pki, p.listen, b"h2");
    let mut hello = PREFACE.to_vec();
    hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
    hello.extend(h2_frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &hpack_get("/h2-raw"),
    ));
    c.send(&hello);
    // The server's SETTINGS (acknowledged), then the whole response.
    loop {
        let (kind, flags, stream, _) = c.frame(W).expect("a response on stream 1");
        if kind == SETTINGS && flags & ACK == 0 {
            c.send(&h2_frame(SETTINGS, ACK, 0, &[]));
        }
        if stream == 1 && flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(up.wait_for_requests(1, W)[0].target, "/h2-raw");

    // The first head is in: the connection's head deadline is over, and only
    // idle_timeout (30 s) applies between requests. Idle past header_timeout:
    // the pause is the test.
    std::thread::sleep(Duration::from_millis(1500));
    c.send(&h2_frame(PING, 0, 0, b"pingpong"));
    loop {
        let (kind, flags, _, payload) = c.frame(W).expect("a PING answer: the connection is open");
        if kind == PING && flags & ACK != 0 {
            assert_eq!(payload, b"pingpong");
            break;
        }
    }

    // A head that starts and never ends: no CONTINUATION with END_HEADERS.
    let started = Instant::now();
    c.send(&h2_frame(HEADERS, END_STREAM, 3, &[0x82]));
    let limit = Duration::from_secs(6);
    assert_cut_at_header_timeout(
        "a HEADERS frame without END_HEADERS",
        c.closed_within(started, limit),
        limit,
    );
    assert_eq!(up.count(), 1);
}

async fn h2_get(client: &mut H2Client, addr: SocketAddr, path: &str) -> u16 {
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_idle_http2_connection_is_closed_after_idle_timeout() {
    let pki = Pki::new();
    let (up, p) = tls_proxy(&pki, "1s", "3s");
    runtime().block_on(async {
        let (mut client, conn) = h2_connect(&pki, p.listen).await;
        assert_eq!(h2_get(&mut client, p.listen, "/first").await, 200);
        let idle_since = Instant::now();
        // `client` stays alive, so the client side does not close it.
        let closed = tokio::time::timeout(Duration::from_secs(8), conn).await;
        let took = idle_since.elapsed();
        assert!(
            closed.is_ok(),
            "an idle HTTP/2 connection is open after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
            "closed {took:?} after its last request; idle_timeout is 3s"
        );
        drop(client);
    });
    assert_eq!(up.count(), 1);
}

#[test]
fn a_busy_http2_connection_stays_open_past_both_timeouts() {
    let pki = Pki::new();
    let (up, p) = tls_proxy(&pki, "1s", "2s");
    runtime().block_on(async {
        let (mut client, conn) = h2_connect(&pki, p.listen).await;
        let started = Instant::now();
        for i in 0..7 {
            let status = h2_get(&mut client, p.listen, &format!("/busy/{i}")).await;
            assert_eq!(status, 200, "request {i}");
            // Busy at this pace past both timeouts: the pauses are the test.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        assert!(started.elapsed() > Duration::from_secs(4));
        assert!(
            !conn.is_finished(),
            "a connection in use was closed after {:?}",
            started.elapsed()
        );
    });
    assert_eq!(up.count(), 7);
}
