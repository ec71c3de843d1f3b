//! `Host` spellings and asterisk-form, with the real Node app behind the
//! proxy: it routes on `new URL(req.url, 'http://' + Host)`, so a `Host` that
//! carries a path puts `OPTIONS *` (and, with some hosts, any target) under
//! the route. Generated `Host` values by the hundred go through unsigned over
//! HTTP/1.1; hand-made ones over HTTP/2, with `host` and no `:authority`
//! (raw frames: no client library sends that). The positives: a good `Host`
//! with a signed delivery still reaches the handler, and `OPTIONS *` with a
//! good `Host` is answered by the proxy (204, `Allow`), never by the app.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const DEFAULT_HOSTS: usize = 600;

/// Hostile `Host` values: a name or address, maybe a port, then something
/// that carries a path, a query, a fragment or user info into a URL base.
fn hostile_hosts(seed: u64, n: usize) -> Vec<String> {
    const NAMES: &[&str] = &[
        "x",
        "h",
        "localhost",
        "127.0.0.1",
        "[::1]",
        "",
        "app.example",
    ];
    const PORTS: &[&str] = &["", "", ":80", ":8080", ":"];
    const CARRIERS: &[&str] = &[
        "/webhooks/persona/",
        "/webhooks/persona/x",
        "/webhooks/persona",
        "/webhooks/persona/.",
        "\\webhooks\\persona\\",
        "/webhooks/persona/?",
        "/webhooks/persona/#",
        "/WEBHOOKS/Persona/",
        "/x/../webhooks/persona/",
        "/webhooks/./persona/",
        "//webhooks/persona/",
        "@h/webhooks/persona/",
        "?/webhooks/persona/",
        "#/webhooks/persona/",
        " /webhooks/persona/",
        "\t/webhooks/persona/",
        "/webhooks%2Fpersona/",
        "%2Fwebhooks%2Fpersona%2F",
        "/webhooks/persona.json/",
        "/webhooks/persona/sub/",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![String::new()];
    while out.len() < n {
        let mut h = String::new();
        h.push_str(pick(&mut rng, NAMES));
        h.push_str(pick(&mut rng, PORTS));
        h.push_str(pick(&mut rng, CARRIERS));
        if rng.gen_bool(0.2) {
            h.push_str(pick(&mut rng, CARRIERS));
        }
        out.push(h);
    }
    out
}

/// `(method, target)` to send with a hostile `Host`: mostly asterisk-form.
fn request_for(i: usize) -> (&'static str, &'static [u8]) {
    match i % 5 {
        0..=2 => ("OPTIONS", b"*"),
        3 => ("POST", b"/"),
        _ => ("GET", b"/other"),
    }
}

/// Sends each `(method, target, host)` to `addr` from [`WORKERS`] threads.
fn send_hosts(addr: SocketAddr, hosts: &[String], body: &[u8]) -> Vec<Option<Answer>> {
    let jobs: Vec<(usize, &String)> = hosts.iter().enumerate().collect();
    let chunk = jobs.len().div_ceil(WORKERS).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(i, h)| {
                            let (method, target) = request_for(*i);
                            exchange(addr, method, target, h, &[], body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sender thread"))
            .collect()
    })
}

fn all_runs(app: &App) -> u64 {
    app.counts().values().sum()
}

#[test]
fn router_suite_node_hosts_and_asterisk_form() {
    let n = env_or("PG_ROUTER_HOSTS", DEFAULT_HOSTS);
    let seed = env_or("PG_ROUTER_SEED", DEFAULT_SEED);
    let app = App::start(Framework::NodeUrl);
    let p = Proxy::builder().upstream_addr(app.addr).start();
    let body = event_body("evt_unsigned_host_suite", "inquiry.approved");

    // Positives: a good Host with a signed delivery reaches the handler; with
    // `OPTIONS *` the proxy answers itself.
    for host in ["h", "h:80", "127.0.0.1:8080", "[::1]:443", "app.example"] {
        let runs = all_runs(&app);
        let signed = event_body(&event_id(), "inquiry.approved");
        let sig = vec![("Persona-Signature", sign(p.secret(), now(), &signed))];
        let a = exchange(p.listen, "POST", ROUTE.as_bytes(), host, &sig, &signed)
            .expect("an answer to a signed delivery");
        assert_eq!(
            (a.status, a.handler.as_deref()),
            (200, Some("webhook")),
            "{host}"
        );
        let a = exchange(p.listen, "OPTIONS", b"*", host, &[], b"").expect("an answer");
        assert_eq!(
            (a.status, a.handler.as_deref()),
            (204, None),
            "OPTIONS * with {host}"
        );
        assert_eq!(
            all_runs(&app),
            runs + 1,
            "only the delivery reached the app"
        );
    }

    // Unsigned, hostile Host values through the proxy: each is refused with
    // 400 malformed_request, and nothing reaches the app at all.
    let hosts = hostile_hosts(seed, n);
    let runs = all_runs(&app);
    let answers = send_hosts(p.listen, &hosts, &body);
    let mut bypasses = Vec::new();
    let mut other = Vec::new();
    for (i, (h, a)) in hosts.iter().zip(&answers).enumerate() {
        let (method, _) = request_for(i);
        match a {
            Some(a) if a.ran_webhook(Case::Persona) => bypasses.push(format!("{method} {h:?}")),
            Some(a) if a.status == 400 && a.code.as_deref() == Some("malformed_request") => {}
            // pingora itself refuses user info in Host, with a bare 400.
            Some(a) if a.status == 400 && a.code.is_none() && h.contains('@') => {}
            a => other.push(format!(
                "{method} {h:?}: {:?}",
                a.as_ref().map(|a| a.status)
            )),
        }
    }
    let forwarded = all_runs(&app) - runs;

    // The same straight to the app: what the proxy had to catch.
    let direct = send_hosts(app.addr, &hosts, &body);
    let dangerous = direct
        .iter()
        .filter(|a| a.as_ref().is_some_and(|a| a.ran_webhook(Case::Persona)))
        .count();
    eprintln!(
        "router suite NodeUrl hosts: seed {seed:#x}, {n} Host spellings; {dangerous} run a \
         webhook handler straight to the app, {} through the proxy; {} answered otherwise",
        bypasses.len(),
        other.len()
    );
    assert!(
        bypasses.is_empty(),
        "unsigned requests ran a webhook handler: {bypasses:?}"
    );
    assert!(
        other.is_empty(),
        "not refused as malformed_request: {:?}",
        &other[..other.len().min(20)]
    );
    assert_eq!(forwarded, 0, "the app ran a handler for a hostile Host");
    assert!(
        dangerous * 10 >= n,
        "only {dangerous} of {n} Host spellings reach a webhook handler directly; \
         the generator no longer exercises the app"
    );
}

// ------------------------------------------------------------- HTTP/2

/// One HPACK literal header field without indexing, new name, no Huffman
/// (RFC 7541 §6.2.2); names and values under 127 bytes.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The answer on stream 1: the first byte of its header block (an indexed
/// `:status`: 0x89 is 204, 0x8c is 400) and its body; `None` if reset.
struct H2Answer {
    status_byte: Option<u8>,
    body: Vec<u8>,
}

/// Sends one request on a new HTTP/2 connection with exactly the header
/// fields given (pseudo-headers first), and `body` if not empty.
fn h2_raw(pki: &Pki, addr: SocketAddr, fields: &[(&str, &str)], body: &[u8]) -> H2Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"h2"]))
            .connect(name, tcp)
            .await
            .unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame(&mut out, 4, 0, 0, &[]);
        let mut block = Vec::new();
        for (n, v) in fields {
            literal(&mut block, n, v);
        }
        let end = if body.is_empty() { 0x5 } else { 0x4 };
        frame(&mut out, 1, end, 1, &block);
        if !body.is_empty() {
            frame(&mut out, 0, 0x1, 1, body);
        }
        tls.write_all(&out).await.unwrap();
        let mut answer = H2Answer {
            status_byte: None,
            body: Vec::new(),
        };
        let read = async {
            loop {
                let mut head = [0u8; 9];
                if tls.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                if tls.read_exact(&mut payload).await.is_err() {
                    return;
                }
                match (kind, stream) {
                    (4, 0) if flags & 1 == 0 => {
                        let mut ack = Vec::new();
                        frame(&mut ack, 4, 1, 0, &[]);
                        let _ = tls.write_all(&ack).await;
                    }
                    (1, 1) => {
                        answer.status_byte = payload.first().copied();
                        if flags & 1 == 1 {
                            return;
                        }
                    }
                    (0, 1) => {
                        answer.body.extend_from_slice(&payload);
                        if flags & 1 == 1 {
                            return;
                        }
                    }
                    (3, 1) | (7, _) => return,
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
        answer
    })
}

/// Over HTTP/2, `host` without `:authority` (and a bad `host` beside a good
/// `:authority`) is held to the same rule; `OPTIONS *` is answered by the
/// proxy; a signed delivery with a good `host` still reaches the handler.
#[test]
fn http2_host_without_authority_and_asterisk_form() {
    let app = App::start(Framework::NodeUrl);
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let p = Proxy::builder()
        .upstream_addr(app.addr)
        .apply(listen_tls(&leaf))
        .start();
    let runs = all_runs(&app);
    let asterisk = [(":method", "OPTIONS"), (":scheme", "https"), (":path", "*")];
    for bad in [
        "x/webhooks/persona/",
        "x\\webhooks\\persona\\",
        "x?/webhooks/persona/",
        "x#/webhooks/persona/",
        "",
    ] {
        let mut fields = asterisk.to_vec();
        fields.push(("host", bad));
        let a = h2_raw(&pki, p.listen, &fields, b"");
        let text = String::from_utf8_lossy(&a.body);
        assert_eq!(
            a.status_byte,
            Some(0x8c),
            "OPTIONS * with host {bad:?}: {text}"
        );
        assert!(text.contains("malformed_request"), "{bad:?}: {text}");
        // On an ordinary target, with the same `:authority` (pingora itself
        // refuses a `host` that differs from `:authority`, and user info).
        let fields = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", bad),
            (":path", "/other"),
            ("host", bad),
        ];
        let a = h2_raw(&pki, p.listen, &fields, b"{}");
        assert!(
            !String::from_utf8_lossy(&a.body).contains("handler"),
            "{bad:?}"
        );
    }
    assert_eq!(all_runs(&app), runs, "a bad host reached the app");

    // Positives: OPTIONS * with a good host is the proxy's 204; a signed
    // delivery with a good `host` and no `:authority` reaches the handler.
    let mut fields = asterisk.to_vec();
    fields.push(("host", "h"));
    let a = h2_raw(&pki, p.listen, &fields, b"");
    assert_eq!((a.status_byte, a.body.len()), (Some(0x89), 0));
    assert_eq!(all_runs(&app), runs, "OPTIONS * reached the app");
    let body = event_body(&event_id(), "inquiry.approved");
    let sig = sign(p.secret(), now(), &body);
    let len = body.len().to_string();
    let fields = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", ROUTE),
        ("host", "h:443"),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
        ("persona-signature", sig.as_str()),
    ];
    let a = h2_raw(&pki, p.listen, &fields, &body);
    let text = String::from_utf8_lossy(&a.body);
    assert!(
        text.contains("\"handler\":\"webhook\""),
        "{:?} {text}",
        a.status_byte
    );
    assert_eq!(app.webhook_runs(Case::Persona), 1);
}
