//! The edge gateway: TLS on the public listener (HTTP/1.1 and HTTP/2), a renewed
//! certificate picked up on SIGHUP (and checked first), header and idle timeouts
//! on HTTP/2 connections, and an upstream over TLS with a private CA.
//! Certificates are generated here with rcgen.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::harness::*;

/// A private CA and leaf certificates for `localhost` / 127.0.0.1, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A validity period: first and last day (year, month, day).
pub type Period = ((i32, u8, u8), (i32, u8, u8));

pub struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "persona-guard test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn leaf(&self, name: &str) -> Leaf {
        self.leaf_valid(name, None)
    }

    /// A leaf valid between the two dates (year, month, day), or rcgen's
    /// default period (1975 to 4096) with `None`.
    pub fn leaf_valid(&self, name: &str, period: Option<Period>) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        if let Some(((y0, m0, d0), (y1, m1, d1))) = period {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
            der: cert.der().to_vec(),
            pem: cert.pem(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// Serves the public listener over TLS with `leaf` (for [`ProxyBuilder::apply`]).
pub fn listen_tls(leaf: &Leaf) -> impl FnOnce(ProxyBuilder) -> ProxyBuilder {
    let (cert, key) = (
        leaf.cert.display().to_string(),
        leaf.key.display().to_string(),
    );
    move |b| b.set("listen.tls.cert", cert).set("listen.tls.key", key)
}

/// One HTTP/1.1 request over TLS; returns (status, body, server certificate DER).
fn https_h1(pki: &Pki, addr: SocketAddr, raw: &[u8]) -> (u16, Vec<u8>, Vec<u8>) {
    let cfg = pki.client_config(&[b"http/1.1"]);
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(W)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out); // the request says Connection: close
    let der = tls.conn.peer_certificates().unwrap()[0].to_vec();
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(&out).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response: {out:?}"),
    };
    (resp.code.unwrap(), out[head..].to_vec(), der)
}

fn closing(raw: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(raw).unwrap();
    text.replacen("\r\n", "\r\nConnection: close\r\n", 1)
        .into_bytes()
}

#[test]
fn tls_listener_verifies_and_forwards_http1() {
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let (up, p) = rig_with(|b| b.apply(listen_tls(&leaf)));
    let body = event_body(&event_id(), "inquiry.approved");
    let good = closing(delivery(ROUTE, &sign(p.secret(), now(), &body), &body));
    let (status, _, der) = https_h1(&pki, p.listen, &good);
    assert_eq!(status, 200);
    assert_eq!(der, leaf.der, "the configured certificate is served");
    assert_eq!(up.wait_for_requests(1, W)[0].body, body);

    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let bad = closing(delivery(ROUTE, &sign(p.secret(), now(), &body), &tampered));
    let (status, resp, _) = https_h1(&pki, p.listen, &bad);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(up.count(), 1);
}

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

#[test]
fn sighup_serves_a_renewed_certificate_without_restart() {
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let (_up, p) = rig_with(|b| b.apply(listen_tls(&leaf)));
    let get = b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(https_h1(&pki, p.listen, get).2, leaf.der);

    let renewed = pki.leaf("renewed");
    std::fs::copy(&renewed.cert, &leaf.cert).unwrap();
    std::fs::copy(&renewed.key, &leaf.key).unwrap();
    p.signal("HUP");
    assert!(
        wait_until(W, || https_h1(&pki, p.listen, get).2 == renewed.der),
        "the renewed certificate is not served: {}",
        p.stderr()
    );
    // A broken key file is refused and the current certificate stays.
    std::fs::write(&leaf.key, "not a key").unwrap();
    p.signal("HUP");
    let err = "persona_guard_config_reloads_total{result=\"error\"}";
    assert!(
        wait_until(W, || p.metric_or_zero(err) == 1.0),
        "{}",
        p.stderr()
    );
    assert_eq!(https_h1(&pki, p.listen, get).2, renewed.der);
}

/// A TLS upstream that answers every request 200 and records the request heads.
fn tls_upstream(leaf: &Leaf) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let certs = vec![CertificateDer::from(leaf.der.clone())];
    let key_pem = std::fs::read(&leaf.key).unwrap();
    let key = rustls_key(&key_pem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let cfg = Arc::new(cfg);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            let cfg = cfg.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let _ = sock.set_read_timeout(Some(W));
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                loop {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 8192];
                    let (head, len) = loop {
                        match tls.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                        let mut headers = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(h)) = req.parse(&buf) {
                            let len = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                                .unwrap_or(0usize);
                            break (h, len);
                        }
                    };
                    while buf.len() < head + len {
                        match tls.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..head]).to_string());
                    let body = b"tls-upstream";
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if tls.write_all(resp.as_bytes()).is_err() || tls.write_all(body).is_err() {
                        return;
                    }
                    let _ = tls.flush();
                }
            });
        }
    });
    (addr, seen)
}

fn rustls_key(pem: &[u8]) -> PrivateKeyDer<'static> {
    let text = String::from_utf8(pem.to_vec()).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64_decode(&b64);
    PrivateKeyDer::Pkcs8(der.into())
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn upstream_over_tls_with_a_private_ca_and_upstream_host() {
    let pki = Pki::new();
    let leaf = pki.leaf("upstream");
    let (addr, seen) = tls_upstream(&leaf);
    let literal = format!("https://localhost:{}", addr.port());
    let p = Proxy::builder()
        .set("upstream.address", literal.as_str())
        .set("upstream.ca_file", pki.ca_file().display().to_string())
        .set("upstream.host_header", "upstream")
        .start();
    let body = event_body(&event_id(), "inquiry.approved");
    let r = p.deliver(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"tls-upstream");
    let r = p.send(&request("GET", "/passthrough", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let host = format!("host: localhost:{}", addr.port());
    for h in &heads {
        assert!(h.to_ascii_lowercase().contains(&host), "{h}");
    }

    // Without the private CA the upstream's certificate is not trusted.
    let strict = Proxy::builder().set("upstream.address", literal).start();
    strict
        .deliver(&event_body(&event_id(), "inquiry.approved"))
        .assert_error(502, "upstream_unavailable");
    assert_eq!(seen.lock().unwrap().len(), 2);
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

pub type H2Client = h2::client::SendRequest<bytes::Bytes>;

/// An HTTP/2 client over TLS, and the task driving its connection (it ends
/// when the connection closes).
pub async fn h2_connect(pki: &Pki, addr: SocketAddr) -> (H2Client, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"h2"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
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

// ---------------------------------------------------------------------------
// Certificate checks at start and on SIGHUP
// ---------------------------------------------------------------------------

const RELOAD_OK: &str = "persona_guard_config_reloads_total{result=\"ok\"}";
const RELOAD_ERROR: &str = "persona_guard_config_reloads_total{result=\"error\"}";
const EXPIRED: Option<Period> = Some(((2001, 1, 1), (2002, 1, 1)));
const NOT_YET_VALID: Option<Period> = Some(((2090, 1, 1), (2091, 1, 1)));

/// The DER of the certificate the listener serves now.
fn served(pki: &Pki, addr: SocketAddr) -> Vec<u8> {
    let get = b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    https_h1(pki, addr, get).2
}

/// Writes `leaf` (with `extra` PEM after it) and its key over `running`'s files.
fn install(leaf: &Leaf, extra: &str, running: &Leaf) {
    std::fs::write(&running.cert, format!("{}{extra}", leaf.pem)).unwrap();
    std::fs::copy(&leaf.key, &running.key).unwrap();
}

#[test]
fn sighup_refuses_a_certificate_outside_its_validity_period() {
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let (_up, p) = rig_with(|b| b.apply(listen_tls(&leaf)));
    assert_eq!(served(&pki, p.listen), leaf.der);

    for (n, (name, period, why)) in [
        ("expired", EXPIRED, "has expired"),
        ("early", NOT_YET_VALID, "not valid yet"),
    ]
    .into_iter()
    .enumerate()
    {
        install(&pki.leaf_valid(name, period), "", &leaf);
        p.signal("HUP");
        let refused = (n + 1) as f64;
        assert!(
            wait_until(W, || p.metric_or_zero(RELOAD_ERROR) == refused),
            "{name}: the reload was not refused: {}",
            p.stderr()
        );
        assert_eq!(
            served(&pki, p.listen),
            leaf.der,
            "{name}: the running certificate stays"
        );
        let log = p.stderr();
        assert!(
            log.lines().any(|l| l.contains("reload refused")
                && l.contains("listen.tls")
                && l.contains(why)),
            "{name}: no refusal naming listen.tls and `{why}`:\n{log}"
        );
    }
    assert_eq!(p.metric_or_zero(RELOAD_OK), 0.0);

    // A valid one is served.
    let renewed = pki.leaf("renewed");
    install(&renewed, "", &leaf);
    p.signal("HUP");
    assert!(
        wait_until(W, || served(&pki, p.listen) == renewed.der),
        "the renewed certificate is not served: {}",
        p.stderr()
    );
    assert_eq!(p.metric(RELOAD_OK), 1.0);
    assert!(!p.stderr().contains("BEGIN"), "{}", p.stderr());
}

#[test]
fn sighup_warns_about_an_unrelated_certificate_in_the_chain_and_serves_it() {
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let (_up, p) = rig_with(|b| b.apply(listen_tls(&leaf)));
    let warning = "did not sign";

    // A proper chain: the leaf, then the CA that signed it. No warning.
    let chained = pki.leaf("chained");
    install(&chained, &pki.ca_pem(), &leaf);
    p.signal("HUP");
    assert!(
        wait_until(W, || p.metric_or_zero(RELOAD_OK) == 1.0),
        "{}",
        p.stderr()
    );
    assert_eq!(served(&pki, p.listen), chained.der);
    assert!(!p.stderr().contains(warning), "{}", p.stderr());

    // An unrelated CA certificate after the leaf: served, with a warning.
    let other = Pki::new();
    let mixed = pki.leaf("mixed");
    install(&mixed, &other.ca_pem(), &leaf);
    p.signal("HUP");
    assert!(
        wait_until(W, || p.metric_or_zero(RELOAD_OK) == 2.0),
        "{}",
        p.stderr()
    );
    assert_eq!(served(&pki, p.listen), mixed.der);
    let log = p.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(warning))
        .unwrap_or_else(|| panic!("no warning about the chain:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("listen.tls") && line.contains("certificate 2"),
        "{line}"
    );
    assert_eq!(p.metric_or_zero(RELOAD_ERROR), 0.0);
    assert!(
        !log.contains("BEGIN") && !log.contains("test CA"),
        "certificate contents in the log:\n{log}"
    );
}

#[test]
fn an_expired_certificate_at_start_is_a_configuration_error() {
    let pki = Pki::new();
    let expired = pki.leaf_valid("expired", EXPIRED);
    let builder = Proxy::builder().apply(listen_tls(&expired));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("expired.toml");
    std::fs::write(&path, builder.toml()).unwrap();
    let env = [(
        "PERSONA_WEBHOOK_SECRET",
        builder.secret_values()[0].as_str(),
    )];
    // `check` first: the old build would serve on `run` (and time out here).
    for cmd in ["check", "run"] {
        let out = run_cli(&[cmd, "--config", path.to_str().unwrap()], &env, None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(64), "{cmd}: exit code\n{text}");
        assert!(
            text.contains("listen.tls") && text.contains("has expired"),
            "{cmd}: {text}"
        );
        assert!(
            !text.contains(expired.cert.to_str().unwrap()) && !text.contains("BEGIN"),
            "{cmd}: a value from the file or the certificate in the output:\n{text}"
        );
    }
}
