//! One client cannot hold the proxy's connections: `[server] max_connections`
//! and `max_connections_per_peer`, and a request head due whole within
//! `header_timeout` (§ Client limits).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::harness::*;

const PEER_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const PEER_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OPEN: &str = "persona_guard_client_connections";
const BY_TOTAL: &str = "persona_guard_connections_refused_total{reason=\"max_connections\"}";
const BY_PEER: &str =
    "persona_guard_connections_refused_total{reason=\"max_connections_per_peer\"}";

/// Resident memory (bytes) and open descriptors of a process, from /proc.
fn rss_and_fds(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count();
    (crate::hostile::rss(pid), fds)
}

/// A connection from `from` that sends the start of a head and then nothing.
fn slow(p: &Proxy, from: IpAddr) -> Client {
    let mut c = Client::connect_from(from, p.listen);
    c.send(b"GET /slow HTTP/1.1\r\nHost: e2e.test\r\n");
    c
}

/// Opens `n` slow connections from `from`, each admitted: the gauge is at
/// `open + n` once they are.
fn admitted(p: &Proxy, from: IpAddr, n: usize, open: usize) -> Vec<Client> {
    let conns: Vec<Client> = (0..n).map(|_| slow(p, from)).collect();
    p.wait_for_metric(OPEN, (open + n) as f64);
    conns
}

#[test]
fn past_either_connection_limit_a_new_connection_is_closed_at_once_and_counted() {
    let (up, p) = rig_with(|b| {
        b.set("server.max_connections", 12i64)
            .set("server.max_connections_per_peer", 4i64)
            .set("server.trusted_proxies", vec!["127.0.0.1"])
            .set("server.header_timeout", "30s")
    });
    assert!(
        wait_until(W, || p.metric(OPEN) == 0.0),
        "readiness probe left open"
    );
    // Peer B may hold 4; the fifth is closed before anything is read.
    let mut held_b = admitted(&p, PEER_B, 4, 0);
    let mut refused = slow(&p, PEER_B);
    let started = Instant::now();
    assert!(
        refused.closed_within(W),
        "a fifth connection from one peer is held"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    p.wait_for_metric(BY_PEER, 1.0);
    // Peer A is a trusted proxy: no per-peer limit, but the total binds.
    let mut held_a = admitted(&p, PEER_A, 8, 4);
    let mut refused = slow(&p, PEER_A);
    assert!(
        refused.closed_within(W),
        "a connection past the total is held"
    );
    p.wait_for_metric(BY_TOTAL, 1.0);
    assert_eq!(p.metric(BY_PEER), 1.0);
    assert_eq!(p.metric(OPEN), 12.0);
    // The held ones were kept: each finishes its request.
    for c in held_a.iter_mut().chain(held_b.iter_mut()).take(2) {
        c.send(b"\r\n");
        assert_eq!(c.read_response().status, 200);
    }
    // Every close gives its place back, whatever ended the connection.
    drop(held_b);
    p.wait_for_metric(OPEN, 8.0);
    let mut c = Client::connect_from(PEER_B, p.listen);
    assert_eq!(c.request(&request("GET", "/again", &[], b"")).status, 200);
    assert_eq!(up.count(), 3);

    // A reload applies to new connections: peer B may now hold 1.
    p.edit_config(|b| {
        b.set("server.max_connections", 12i64)
            .set("server.max_connections_per_peer", 1i64)
            .set("server.trusted_proxies", vec!["127.0.0.1"])
            .set("server.header_timeout", "30s")
    });
    p.reload_ok();
    let mut second = Client::connect_from(PEER_B, p.listen);
    assert!(
        second.closed_within(W),
        "the reloaded per-peer limit is not applied"
    );
    p.wait_for_metric(BY_PEER, 2.0);
    drop(held_a);
}

/// 3,000 slow connections from one address: all held before (3,000 more
/// descriptors); now `max_connections_per_peer` (default 256) bounds the
/// descriptors and the memory. Prints what it measured.
#[test]
fn three_thousand_slow_connections_hold_descriptors_and_memory_bounded_by_the_limits() {
    const CLIENTS: usize = 3000;
    const PER_PEER: usize = 256;
    let (_up, p) = rig_with(|b| b.set("server.header_timeout", "60s"));
    assert_eq!(
        one_shot(
            p.listen,
            &request("GET", "/warm", &[("Connection", "close")], b"")
        )
        .status,
        200
    );
    assert!(wait_until(W, || p.metric_or_zero(OPEN) == 0.0));
    let (rss0, fds0) = rss_and_fds(p.pid());
    let started = Instant::now();
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = Client::connect(p.listen);
        // Refused ones may already be closed: their writes may fail.
        let _ = c.try_send(b"GET /slow HTTP/1.1\r\nHost: e2e.test\r\n");
        conns.push(c);
    }
    // Let the proxy take them all in (or, without limits, hold them), then
    // measure at the peak.
    let settled = wait_until(W, || {
        p.metric_or_zero(OPEN) as usize + p.metric_or_zero(BY_PEER) as usize >= CLIENTS
    });
    let mut peak = rss_and_fds(p.pid());
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        // Sampling over a fixed window: the interval is the measurement.
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_and_fds(p.pid());
        peak = (peak.0.max(now.0), peak.1.max(now.1));
    }
    let (open, refused) = (p.metric_or_zero(OPEN), p.metric_or_zero(BY_PEER));
    eprintln!(
        "{CLIENTS} slow connections in {:.1}s: {open} held, {refused} refused; proxy fds {fds0} -> {}, \
         RSS {:.1} -> {:.1} MiB ({:.1} KiB per held connection)",
        started.elapsed().as_secs_f64(),
        peak.1,
        rss0 as f64 / 1048576.0,
        peak.0 as f64 / 1048576.0,
        peak.0.saturating_sub(rss0) as f64 / 1024.0 / open.max(1.0),
    );
    assert!(settled, "the proxy did not take in every connection");
    assert_eq!(open as usize, PER_PEER);
    // At least: on a loaded machine a client's connect can be retried and
    // counted twice; what matters is that no more than PER_PEER are held.
    assert!(refused as usize >= CLIENTS - PER_PEER, "{refused} refused");
    // Held descriptors, once the refused ones are closed (while they are
    // being closed the count passes the bound for a moment).
    let held_fds = rss_and_fds(p.pid()).1;
    assert!(
        held_fds <= fds0 + PER_PEER + 16,
        "{held_fds} descriptors open for {PER_PEER} admitted connections (from {fds0}; peak {})",
        peak.1
    );
    assert!(
        peak.0 <= rss0 + 48 * 1024 * 1024,
        "RSS grew from {rss0} to {} bytes",
        peak.0
    );
    drop(conns);
    p.wait_for_metric(OPEN, 0.0);
}

/// Writes `bytes` one at a time, `every` apart, from a thread, until a write
/// fails (the proxy closed) or all are sent.
fn trickle(c: &Client, bytes: &[u8], every: Duration) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let mut s = c.stream.try_clone().unwrap();
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        for b in bytes {
            if s.write_all(&[b]).is_err() {
                return;
            }
            // A client trickling its head: the pauses are the test.
            std::thread::sleep(every);
        }
    })
}

/// A head padded to arrive, a byte per 200 ms, over about 16 s.
fn long_head(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: e2e.test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(40)
    )
    .into_bytes()
}

#[test]
fn a_request_head_must_arrive_whole_within_header_timeout_on_new_and_reused_connections() {
    let (up, p) = rig_with(|b| {
        b.set("server.header_timeout", "1s")
            .set("server.idle_timeout", "20s")
    });
    let every = Duration::from_millis(200);
    // A new connection: due 1 s after it began, however steadily bytes come.
    let mut c = p.client();
    let started = Instant::now();
    let t = trickle(&c, &long_head("/trickled-first"), every);
    assert!(
        c.closed_within(Duration::from_secs(6)),
        "a trickled first head kept its connection"
    );
    let took = started.elapsed();
    eprintln!("a head trickled on a new connection: closed after {took:?} (header_timeout 1s)");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    t.join().unwrap();

    // A reused connection: idle longer than header_timeout is fine (the wait
    // for the next head's first byte is idle_timeout)...
    let mut c = p.client();
    assert_eq!(c.request(&request("GET", "/one", &[], b"")).status, 200);
    // Idle past header_timeout: the pause is the test.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.request(&request("GET", "/two", &[], b"")).status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    // ...but once a byte of the next head is in, the whole head is due within it.
    let started = Instant::now();
    let t = trickle(&c, &long_head("/trickled-reused"), every);
    assert!(
        c.closed_within(Duration::from_secs(6)),
        "a trickled reused head kept its connection"
    );
    let took = started.elapsed();
    eprintln!("a head trickled on a reused connection: closed after {took:?} (header_timeout 1s)");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    t.join().unwrap();

    // The positive twin: a head that arrives in pieces within the timeout is served.
    let mut c = p.client();
    let head = request("GET", "/in-pieces", &[], b"");
    for piece in head.chunks(head.len() / 3 + 1) {
        c.send(piece);
        // Pieces 250 ms apart, 750 ms in all: the pauses are the test.
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(c.read_response().status, 200);
    let seen: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/one", "/two", "/in-pieces"]);
}

/// TLS and HTTP/2 connections are counted too, from accept to close: two
/// HTTP/2 connections fill a per-peer limit of 2, a third connection is closed
/// before its TLS handshake, and closing one gives its place back.
#[test]
fn tls_and_http2_connections_are_counted_from_accept_to_close() {
    use crate::tls::{Pki, h2_connect, listen_tls};
    let pki = Pki::new();
    let leaf = pki.leaf("server");
    let up = Upstream::start();
    let p = Proxy::builder()
        .upstream(&up)
        .apply(listen_tls(&leaf))
        .set("server.max_connections_per_peer", 2i64)
        .start();
    assert!(wait_until(W, || p.metric(OPEN) == 0.0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (addr, pki) = (p.listen, &pki);
    let (first, first_conn) = rt.block_on(h2_connect(pki, addr));
    let (second, second_conn) = rt.block_on(h2_connect(pki, addr));
    p.wait_for_metric(OPEN, 2.0);
    // Refused before TLS: a plain TCP client sees the close.
    let mut third = Client::connect(p.listen);
    assert!(
        third.closed_within(W),
        "a third connection from one peer is held"
    );
    assert!(
        wait_until(W, || p.metric_or_zero(BY_PEER) >= 1.0),
        "the third connection was not counted as refused"
    );
    // The held ones still serve.
    let status = rt.block_on(async {
        let mut client = first.clone().ready().await.unwrap();
        let uri = format!("https://localhost:{}/h2", addr.port());
        let req = http::Request::get(uri).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        resp.await.unwrap().status().as_u16()
    });
    assert_eq!(status, 200);
    // Each closed by its client: the runtime runs the abort, which drops it.
    let close = |conn: tokio::task::JoinHandle<()>| {
        conn.abort();
        let _ = rt.block_on(conn);
    };
    drop(second);
    close(second_conn);
    p.wait_for_metric(OPEN, 1.0);
    drop(first);
    close(first_conn);
    p.wait_for_metric(OPEN, 0.0);
}
