//! The fault soak: play Persona against the real binary while the app misbehaves,
//! and prove nothing is lost and nothing is doubled.
//!
//! A few hundred unique events are delivered by a pool of "Persona" threads,
//! each attempt signed afresh, retried with (compressed) backoff while the answer
//! is not 2xx; some events are sent twice at once. The app, chosen per request by
//! a seeded generator, answers 2xx, answers 500, stalls past `read_timeout` and
//! hangs up, or hangs up at once; and it is stopped and restarted mid-run. With
//! the Redis store, Redis is restarted mid-run too. Passes only if every event
//! reached the app and the app answered 2xx for it exactly once.
//!
//! Bounded: at most `EVENTS` events, `MAX_ATTEMPTS` attempts each, `DEADLINE`
//! overall. Seed: `PG_SOAK_SEED` (printed on failure).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

const EVENTS: usize = 240;
const SENDERS: usize = 16;
const MAX_ATTEMPTS: u32 = 40;
const DEADLINE: Duration = Duration::from_secs(90);
const READ_TIMEOUT_MS: u64 = 700;

/// SplitMix64: a tiny seeded generator, so a failing run can be replayed.
struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn percent(&self) -> u64 {
        self.next() % 100
    }
}

#[derive(Default)]
struct AppLog {
    /// event id -> how many times the app answered 2xx for it.
    ok: HashMap<String, u32>,
    seen: u64,
}

/// A misbehaving app on a fixed loopback port, stoppable and restartable.
struct FaultyApp {
    addr: SocketAddr,
    running: Arc<AtomicBool>,
    log: Arc<Mutex<AppLog>>,
    rng: Arc<Rng>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl FaultyApp {
    fn start(rng: Arc<Rng>) -> FaultyApp {
        let mut app = FaultyApp {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            running: Arc::new(AtomicBool::new(false)),
            log: Arc::new(Mutex::new(AppLog::default())),
            rng,
            acceptor: None,
        };
        app.restart();
        app
    }

    fn restart(&mut self) {
        let listener = (0..100)
            .find_map(|_| {
                TcpListener::bind(self.addr).ok().or_else(|| {
                    thread::sleep(Duration::from_millis(50));
                    None
                })
            })
            .expect("rebind the app's port");
        listener.set_nonblocking(true).unwrap();
        self.running.store(true, Ordering::SeqCst);
        let (running, log, rng) = (self.running.clone(), self.log.clone(), self.rng.clone());
        self.acceptor = Some(thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (log, rng, running) = (log.clone(), rng.clone(), running.clone());
                        thread::spawn(move || serve(sock, &log, &rng, &running));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
    }

    /// Stops accepting (the port refuses connections) and drops open connections.
    fn stop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FaultyApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut sock: TcpStream, log: &Mutex<AppLog>, rng: &Rng, running: &AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    while running.load(Ordering::SeqCst) {
        // Read one request (head + Content-Length body).
        let (head, len, id) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(h)) = req.parse(&buf) {
                let get = |n: &str| {
                    req.headers
                        .iter()
                        .find(|x| x.name.eq_ignore_ascii_case(n))
                        .map(|x| String::from_utf8_lossy(x.value).to_string())
                };
                let len = get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                break (h, len, get(TRUSTED_ID).unwrap_or_default());
            }
            match sock.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) if running.load(Ordering::SeqCst) => continue,
                Err(_) => return,
            }
        };
        while buf.len() < head + len {
            match sock.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) if running.load(Ordering::SeqCst) => continue,
                Err(_) => return,
            }
        }
        buf.drain(..head + len);
        let roll = rng.percent();
        let status = match roll {
            0..=54 => 200,
            55..=69 => 500,
            70..=79 => {
                // Stall past the proxy's read_timeout, then hang up without an answer.
                thread::sleep(Duration::from_millis(READ_TIMEOUT_MS + 300));
                return;
            }
            _ => return, // hang up at once
        };
        if !running.load(Ordering::SeqCst) {
            return; // stopped mid-request: no answer, like a killed process
        }
        {
            // Record before answering: a 2xx the app gave counts even if the
            // answer is then lost on the way back.
            let mut l = log.lock().unwrap();
            l.seen += 1;
            if status == 200 && !id.is_empty() {
                *l.ok.entry(id).or_default() += 1;
            }
        }
        let body = if status == 200 { "ok" } else { "app error" };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if sock.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// One Persona delivery attempt loop for an event; true once answered 2xx.
fn deliver_until_2xx(p: SocketAddr, secret: &str, body: &[u8], stop: &AtomicBool) -> bool {
    for attempt in 0..MAX_ATTEMPTS {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let raw = delivery(ROUTE, &sign(secret, now(), body), body);
        let status = std::panic::catch_unwind(|| one_shot(p, &raw).status).unwrap_or(0);
        if (200..300).contains(&status) {
            return true;
        }
        // Persona backs off 0, 3, 18, 83, 258 s; compressed here.
        thread::sleep(Duration::from_millis((25 * (1 << attempt.min(4))) as u64));
    }
    false
}

fn soak(redis: Option<&mut RedisServer>) {
    let seed: u64 = std::env::var("PG_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let rng = Arc::new(Rng(AtomicU64::new(seed)));
    let mut app = FaultyApp::start(rng.clone());
    let mut b = Proxy::builder()
        .upstream_addr(app.addr)
        .set("upstream.read_timeout", format!("{READ_TIMEOUT_MS}ms"))
        .set("upstream.connect_timeout", "300ms")
        .set("replay.inflight_ttl", "5s");
    let redis_url = redis.as_ref().map(|r| r.url());
    if let Some(url) = &redis_url {
        b = b.redis(url).set("replay.redis_timeout", "300ms");
    }
    let p = b.start();
    let secret = p.secret().to_string();
    let bodies: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|_| {
            let id = event_id();
            let body = event_body(&id, "inquiry.approved");
            (id, body)
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(Mutex::new(vec![false; EVENTS]));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (bodies, next, delivered, stop, secret, rng) = (
                bodies.clone(),
                next.clone(),
                delivered.clone(),
                stop.clone(),
                secret.clone(),
                rng.clone(),
            );
            let listen = p.listen;
            thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    if i >= EVENTS {
                        return;
                    }
                    let body = bodies[i].1.clone();
                    // Every tenth event is also sent by a second, concurrent sender.
                    let twin = (rng.percent() < 10).then(|| {
                        let (body, secret, stop) = (body.clone(), secret.clone(), stop.clone());
                        thread::spawn(move || deliver_until_2xx(listen, &secret, &body, &stop))
                    });
                    let mut ok = deliver_until_2xx(listen, &secret, &body, &stop);
                    if let Some(t) = twin {
                        ok |= t.join().unwrap_or(false);
                    }
                    delivered.lock().unwrap()[i] = ok;
                }
            })
        })
        .collect();

    // Faults on the outside: the app is stopped and restarted, and Redis too.
    let mut redis = redis;
    for round in 0..3 {
        thread::sleep(Duration::from_millis(700));
        if next.load(Ordering::SeqCst) as usize >= EVENTS {
            break;
        }
        app.stop();
        thread::sleep(Duration::from_millis(400));
        app.restart();
        if round == 1
            && let Some(r) = redis.as_deref_mut()
        {
            r.stop();
            thread::sleep(Duration::from_millis(400));
            r.restart();
        }
    }
    let watchdog = {
        let stop = stop.clone();
        thread::spawn(move || {
            let end = Instant::now() + DEADLINE;
            while Instant::now() < end && !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    for s in senders {
        s.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();

    let delivered = delivered.lock().unwrap().clone();
    let log = app.log.lock().unwrap();
    let mut problems = Vec::new();
    for (i, (id, _)) in bodies.iter().enumerate() {
        let oks = log.ok.get(id).copied().unwrap_or(0);
        if !delivered[i] {
            problems.push(format!("{id}: never answered 2xx to Persona"));
        }
        if oks != 1 {
            problems.push(format!("{id}: the app answered 2xx {oks} times"));
        }
    }
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems in {:?} ({} app requests):\n{}\nproxy log tail:\n{}",
        problems.len(),
        started.elapsed(),
        log.seen,
        problems.join("\n"),
        p.stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "soak seed {seed}: {EVENTS} events delivered exactly once through {} app requests in {:?}",
        log.seen,
        started.elapsed()
    );
    // The faults really happened.
    assert!(
        log.seen > EVENTS as u64,
        "the app saw only {} requests",
        log.seen
    );
}

#[test]
fn soak_memory_store_loses_nothing_and_doubles_nothing() {
    soak(None);
}

#[test]
fn soak_redis_store_loses_nothing_and_doubles_nothing_across_a_redis_restart() {
    let mut redis = RedisServer::start();
    soak(Some(&mut redis));
}
