//! The fault soak: play Persona against the real binary while the app misbehaves,
//! and prove nothing is lost and nothing is doubled.
//!
//! A few hundred unique events are delivered by a pool of "Persona" threads,
//! each attempt signed afresh, retried with (compressed) backoff while the answer
//! is not 2xx; some events are sent twice at once. The app answers 2xx, answers
//! 500, stalls past `read_timeout` and hangs up, or hangs up at once; and it is
//! stopped and restarted mid-run. With the Redis store, Redis is restarted
//! mid-run too, with the append-only file written before each answer (the
//! advice of `docs/replay.md`, "What Redis must keep", for keeping the replay memory: without it a restart forgets
//! the marks, and a retry of an event the app already took is forwarded again,
//! as that section says; most seeds show it). Passes only if every event reached
//! the app and the app answered 2xx for it exactly once, and the faults really
//! happened: they are counted, and the proxy must have met each of them.
//!
//! Bounded: at most `EVENTS` events, `MAX_ATTEMPTS` attempts each, `DEADLINE`
//! overall.
//!
//! Seeded: `PG_SOAK_SEED` (decimal or `0x` hex; printed at the start and on
//! failure) replays a run's choices. Sender thread `t` sends events `t`,
//! `t + SENDERS`, ... and draws from its own generator, derived from (seed, `t`),
//! whether each is also sent by a twin; the app's answers to event `i` come from
//! a generator derived from (seed, `APP_STREAMS + i`), one draw per request for
//! it. What a seed cannot fix is how the threads interleave.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

const EVENTS: usize = 240;
const SENDERS: usize = 16;
const MAX_ATTEMPTS: u32 = 40;
const DEADLINE: Duration = Duration::from_secs(90);
const READ_TIMEOUT_MS: u64 = 700;
const DEFAULT_SEED: u64 = 0x5eed_2026;
/// The app is restarted once this share (percent) of the events is settled, at each.
const APP_RESTARTS_AT: [usize; 3] = [20, 45, 70];
/// Redis is restarted once this share of the events is settled.
const REDIS_RESTART_AT: usize = 55;
/// How long the app or Redis stays down.
const DOWN_FOR: Duration = Duration::from_millis(400);
/// The first generator stream of the app's answers (one per event).
const APP_STREAMS: u64 = 1 << 32;

/// `PG_SOAK_SEED`, decimal or `0x` hex, else the default.
fn seed() -> u64 {
    seed_from("PG_SOAK_SEED", DEFAULT_SEED)
}

/// What the app did.
#[derive(Default, Debug)]
struct AppLog {
    /// event id -> how many times the app answered 2xx for it.
    ok: HashMap<String, u32>,
    /// Requests read, by what the app then did.
    answered_2xx: u64,
    answered_500: u64,
    stalled: u64,
    hung_up: u64,
    /// Requests for no event of the run (there should be none).
    unknown: u64,
}

impl AppLog {
    fn summary(&self) -> String {
        format!(
            "the app answered 2xx {} times, 500 {} times, stalled {} times, hung up {} times",
            self.answered_2xx, self.answered_500, self.stalled, self.hung_up
        )
    }
}

struct AppState {
    running: AtomicBool,
    log: Mutex<AppLog>,
    /// event id -> the generator of the app's answers to it.
    rngs: Mutex<HashMap<String, Rng>>,
}

/// A misbehaving app on a fixed loopback port, stoppable and restartable.
struct FaultyApp {
    addr: SocketAddr,
    state: Arc<AppState>,
    acceptor: Option<thread::JoinHandle<()>>,
    restarts: u32,
}

impl FaultyApp {
    fn start(rngs: HashMap<String, Rng>) -> FaultyApp {
        let mut app = FaultyApp {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            state: Arc::new(AppState {
                running: AtomicBool::new(false),
                log: Mutex::default(),
                rngs: Mutex::new(rngs),
            }),
            acceptor: None,
            restarts: 0,
        };
        app.listen();
        app
    }

    fn listen(&mut self) {
        let addr = self.addr;
        let listener = poll(W, || TcpListener::bind(addr).ok())
            .unwrap_or_else(|| panic!("cannot bind the app's port {addr}"));
        self.state.running.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        self.acceptor = Some(thread::spawn(move || {
            for sock in listener.incoming() {
                if !state.running.load(Ordering::SeqCst) {
                    return; // woken by stop(): the listener closes here
                }
                if let Ok(sock) = sock {
                    let state = state.clone();
                    thread::spawn(move || serve(sock, &state));
                }
            }
        }));
    }

    /// Stops accepting (the port refuses connections) and drops open
    /// connections, like a killed process.
    fn stop(&mut self) {
        self.state.running.store(false, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            // Wake the blocking accept so that it sees `running` is false.
            let _ = TcpStream::connect(self.addr);
            let _ = h.join();
        }
    }

    fn restart(&mut self) {
        self.listen();
        self.restarts += 1;
    }
}

impl Drop for FaultyApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut sock: TcpStream, state: &AppState) {
    let running = || state.running.load(Ordering::SeqCst);
    // Reads wake up now and then to notice a stop.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    while running() {
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
                Err(_) if running() => continue,
                Err(_) => return,
            }
        };
        while buf.len() < head + len {
            match sock.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) if running() => continue,
                Err(_) => return,
            }
        }
        buf.drain(..head + len);
        let Some(roll) = state.rngs.lock().unwrap().get_mut(&id).map(Rng::percent) else {
            state.log.lock().unwrap().unknown += 1;
            return;
        };
        let status = match roll {
            0..=54 => 200,
            55..=69 => 500,
            70..=79 => {
                state.log.lock().unwrap().stalled += 1;
                // Stall past the proxy's read_timeout, then hang up without an
                // answer: the stall is the fault.
                thread::sleep(Duration::from_millis(READ_TIMEOUT_MS + 300));
                return;
            }
            _ => {
                state.log.lock().unwrap().hung_up += 1;
                return; // hang up at once
            }
        };
        if !running() {
            return; // stopped mid-request: no answer, like a killed process
        }
        {
            // Record before answering: a 2xx the app gave counts even if the
            // answer is then lost on the way back.
            let mut l = state.log.lock().unwrap();
            if status == 200 {
                l.answered_2xx += 1;
                *l.ok.entry(id).or_default() += 1;
            } else {
                l.answered_500 += 1;
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
fn deliver_until_2xx(p: SocketAddr, secret: &str, body: &[u8], deadline: Instant) -> bool {
    for attempt in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline {
            return false;
        }
        let raw = delivery(ROUTE, &sign(secret, now(), body), body);
        let status = std::panic::catch_unwind(|| one_shot(p, &raw).status).unwrap_or(0);
        if (200..300).contains(&status) {
            return true;
        }
        // Persona backs off 0, 3, 18, 83, 258 s; compressed here. The wait
        // between attempts is Persona's behaviour, not a poll.
        thread::sleep(Duration::from_millis(25 * (1 << attempt.min(4))));
    }
    false
}

/// The faults injected from outside the app, as they happened.
#[derive(Debug, Default)]
struct Faults {
    app_restarts: u32,
    redis_restarts: u32,
    /// Events settled when each fault began.
    at_settled: Vec<usize>,
}

fn soak(mut redis: Option<&mut RedisServer>) {
    let seed = seed();
    eprintln!("soak: seed {seed:#x} (PG_SOAK_SEED={seed:#x} replays this run's choices)");
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..EVENTS)
            .map(|_| {
                let id = event_id();
                let body = event_body(&id, "inquiry.approved");
                (id, body)
            })
            .collect(),
    );
    let app_rngs = bodies
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.clone(), Rng::new(seed, APP_STREAMS + i as u64)))
        .collect();
    let mut app = FaultyApp::start(app_rngs);
    let mut b = Proxy::builder()
        .upstream_addr(app.addr)
        .set("upstream.read_timeout", format!("{READ_TIMEOUT_MS}ms"))
        .set("upstream.connect_timeout", "300ms")
        .set("replay.inflight_ttl", "5s");
    if let Some(r) = redis.as_deref() {
        b = b.redis(&r.url()).set("replay.redis_timeout", "300ms");
    }
    let p = b.start();
    let secret = p.secret().to_string();
    let delivered = Arc::new(Mutex::new(vec![false; EVENTS]));
    let settled = Arc::new(AtomicUsize::new(0));
    let twins = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + DEADLINE;

    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let (bodies, delivered, settled, twins, secret) = (
                bodies.clone(),
                delivered.clone(),
                settled.clone(),
                twins.clone(),
                secret.clone(),
            );
            let listen = p.listen;
            thread::spawn(move || {
                let mut rng = Rng::new(seed, t as u64);
                for i in (t..EVENTS).step_by(SENDERS) {
                    let body = bodies[i].1.clone();
                    // One event in ten is also sent by a second, concurrent sender.
                    let twin = (rng.percent() < 10).then(|| {
                        twins.fetch_add(1, Ordering::SeqCst);
                        let (body, secret) = (body.clone(), secret.clone());
                        thread::spawn(move || deliver_until_2xx(listen, &secret, &body, deadline))
                    });
                    let mut ok = deliver_until_2xx(listen, &secret, &body, deadline);
                    if let Some(t) = twin {
                        ok |= t.join().unwrap_or(false);
                    }
                    delivered.lock().unwrap()[i] = ok;
                    settled.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Faults from outside, at set points of progress, so that they happen
    // while deliveries are under way however fast the run is.
    let mut faults = Faults::default();
    let mut plan: Vec<(usize, bool)> = APP_RESTARTS_AT.iter().map(|&at| (at, false)).collect();
    if redis.is_some() {
        plan.push((REDIS_RESTART_AT, true));
        plan.sort();
    }
    for (percent, is_redis) in plan {
        let at = EVENTS * percent / 100;
        wait_for(
            format_args!("{at} of {EVENTS} events settled (seed {seed:#x})"),
            DEADLINE,
            || settled.load(Ordering::SeqCst) >= at,
        );
        faults.at_settled.push(settled.load(Ordering::SeqCst));
        // The outage's length is the fault: a sleep by design.
        match (is_redis, redis.as_deref_mut()) {
            (true, Some(r)) => {
                r.stop();
                thread::sleep(DOWN_FOR);
                r.restart();
                faults.redis_restarts += 1;
            }
            _ => {
                app.stop();
                thread::sleep(DOWN_FOR);
                app.restart();
            }
        }
    }
    faults.app_restarts = app.restarts;
    for s in senders {
        s.join().unwrap();
    }

    let delivered = delivered.lock().unwrap().clone();
    let log = app.state.log.lock().unwrap();
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
    if log.unknown > 0 {
        problems.push(format!(
            "the app was sent {} requests for no event",
            log.unknown
        ));
    }
    let summary = format!(
        "seed {seed:#x}: {EVENTS} events ({} twinned); {}; faults {faults:?}; {:?}",
        twins.load(Ordering::SeqCst),
        log.summary(),
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{summary}: {} problems:\n{}\nproxy log tail:\n{}",
        problems.len(),
        problems.join("\n"),
        p.stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("soak delivered every event exactly once: {summary}");

    // The faults really happened, and the proxy met them.
    assert!(
        faults.app_restarts > 0,
        "{summary}: the app was never restarted"
    );
    assert!(
        faults.at_settled.iter().all(|&n| n < EVENTS),
        "{summary}: a fault came after the last event"
    );
    for (what, n) in [
        ("answered 500", log.answered_500),
        ("stalled past read_timeout", log.stalled),
        ("hung up", log.hung_up),
    ] {
        assert!(n > 0, "{summary}: the app never {what}");
    }
    for outcome in ["upstream_unavailable", "upstream_timeout"] {
        let n = p.outcome_total(outcome);
        assert!(n > 0.0, "{summary}: no delivery ended {outcome}");
    }
    if redis.is_some() {
        assert!(
            faults.redis_restarts > 0,
            "{summary}: Redis was never restarted"
        );
        let n = p.outcome_total("replay_store_unavailable");
        assert!(n > 0.0, "{summary}: no delivery met Redis down");
    }
}

#[test]
fn soak_memory_store_loses_nothing_and_doubles_nothing() {
    soak(None);
}

#[test]
fn soak_redis_store_loses_nothing_and_doubles_nothing_across_a_redis_restart() {
    let mut redis = RedisServer::start_persistent();
    soak(Some(&mut redis));
}
