//! The harness of the black-box end-to-end tests. What goes where:
//!
//! - `persona.rs`: Persona's side: the signing scheme (independent of the
//!   crate), event bodies, signed deliveries.
//! - `client.rs`: a raw HTTP/1.1 client: request bytes as sent, responses as read.
//! - `upstream.rs`: the application: a recording upstream whose answer, delay
//!   and hold the test controls, and a scripted one that answers raw bytes.
//! - `config.rs`: a proxy's configuration: one builder over a `toml::Table`.
//! - `proxy.rs`: the `persona-guard` process: start, signals, logs, metrics and
//!   admin calls; the binary's other subcommands.
//! - `redis.rs`: a real `redis-server` child, stoppable and pausable.
//!
//! Waiting is done by polling a condition with a deadline ([`wait_until`],
//! [`wait_for`], [`poll`]); a test sleeps only where the passing time is what it
//! tests (a TTL, a slow client), and says so.

#![allow(dead_code)]

mod client;
mod config;
pub mod jwt;
mod persona;
pub mod persona_api;
mod proxy;
mod redis;
mod rng;
mod shim;
mod upstream;

pub use client::*;
pub use config::*;
pub use persona::*;
pub use proxy::*;
pub use redis::*;
pub use rng::*;
pub use shim::shim;

pub use upstream::*;

use std::fmt::Display;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The usual bound on waiting for something that should happen at once.
pub const W: Duration = Duration::from_secs(10);

/// How often a condition is polled.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Calls `f` every 10 ms until it returns `Some`, or `deadline` has passed.
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Polls `cond` until it holds (true) or `deadline` has passed (false).
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(deadline, || cond().then_some(())).is_some()
}

/// Polls `cond` until it holds; panics naming `what` after `deadline`.
pub fn wait_for(what: impl Display, deadline: Duration, cond: impl FnMut() -> bool) {
    let started = Instant::now();
    if !wait_until(deadline, cond) {
        panic!("timed out after {:?} waiting for {what}", started.elapsed());
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A string unique across tests, processes and runs.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{n}x{nanos:08x}", std::process::id())
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
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `sig` (e.g. "STOP") to the process `pid`, by its own id.
pub fn kill(sig: &str, pid: u32) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
    assert!(st.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

/// An upstream and a proxy with one route in front of it: most tests' setup.
pub fn rig() -> (Upstream, Proxy) {
    rig_with(|b| b)
}

/// [`rig`] with the proxy's configuration edited by `f`.
pub fn rig_with(f: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> (Upstream, Proxy) {
    let up = Upstream::start();
    let p = f(Proxy::builder().upstream(&up)).start();
    (up, p)
}

/// Delivers `body` through `targets[0]` to an app that takes longer than
/// `inflight_ttl` (the test set its delay) and, while that delivery is alive,
/// sends a freshly signed retry every 250 ms through each target in turn:
/// every retry must be answered 409 `delivery_in_progress` with
/// `1 <= Retry-After <= inflight_ttl`. Returns the first delivery's answer and
/// how long the retries kept being refused.
pub fn retries_while_in_flight(
    targets: &[std::net::SocketAddr],
    secret: &str,
    body: &[u8],
    up: &Upstream,
    inflight_ttl: Duration,
) -> (Response, Duration) {
    let raw = delivery(ROUTE, &sign(secret, now(), body), body);
    let first = targets[0];
    let start = Instant::now();
    let delivering = std::thread::spawn(move || one_shot(first, &raw));
    up.wait_for_requests(1, W);
    let mut last_refused = start;
    let mut i = 0;
    while !delivering.is_finished() {
        let raw = delivery(ROUTE, &sign(secret, now(), body), body);
        let sent = Instant::now();
        let r = one_shot(targets[i % targets.len()], &raw);
        if delivering.is_finished() && r.status != 409 {
            break; // the first delivery was settled meanwhile
        }
        r.assert_error(409, "delivery_in_progress");
        let secs: u64 = r
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok())
            .expect("a 409 carries Retry-After in whole seconds");
        assert!(
            (1..=inflight_ttl.as_secs().max(1)).contains(&secs),
            "Retry-After {secs} is outside 1..=inflight_ttl"
        );
        last_refused = sent;
        i += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    (delivering.join().unwrap(), last_refused - start)
}
