//! The edge gateway: TLS on the public listener (HTTP/1.1 and HTTP/2), a renewed
//! certificate picked up on SIGHUP, and an upstream over TLS with a private CA.
//! Certificates are generated here with rcgen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::common::*;

const W: Duration = Duration::from_secs(10);

/// A private CA and leaf certificates for `localhost` / 127.0.0.1, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

pub struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
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
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
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

pub fn listen_tls(leaf: &Leaf) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        leaf.cert.display(),
        leaf.key.display()
    )
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
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .listen_toml(&listen_tls(&leaf))
        .start();
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
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .listen_toml(&listen_tls(&leaf))
        .start();
    let id = event_id();
    let body = event_body(&id, "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let cfg = pki.client_config(&[b"h2"]);
    let addr = p.listen;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |sig: String, body: Vec<u8>, spoof: bool| {
        let cfg = cfg.clone();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
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
    let up = Upstream::start();
    let p = proxy()
        .upstream(&up)
        .listen_toml(&listen_tls(&leaf))
        .start();
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
    assert!(wait_until(W, || p.metric(err) == 1.0), "{}", p.stderr());
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
    let p = proxy()
        .upstream_literal(&literal)
        .upstream_toml(&format!(
            "ca_file = \"{}\"\nhost_header = \"upstream\"\n",
            pki.ca_file().display()
        ))
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
    let strict = proxy().upstream_literal(&literal).start();
    strict
        .deliver(&event_body(&event_id(), "inquiry.approved"))
        .assert_error(502, "upstream_unavailable");
    assert_eq!(seen.lock().unwrap().len(), 2);
}
