//! The edge gateway: TLS on the public listener (HTTP/1.1), a renewed
//! certificate picked up on SIGHUP (and checked first), and an upstream over
//! TLS with a private CA. Certificates are generated here with rcgen; the
//! HTTP/2 client is here too, its tests are in `tls_h2.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
