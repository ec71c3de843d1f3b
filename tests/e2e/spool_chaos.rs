//! The randomized fault run of the spool (`docs/behaviour.md` § Delivery
//! spool, "Restarts"): Persona delivers events to a spooling route while, at
//! random moments, the proxy is stopped with SIGTERM or killed with `kill -9`
//! and restarted on the same spool directory, the app answers 500 or slowly,
//! and every `fsync` of the proxy is slowed down (a slow disk, through the
//! preloaded fault shim).
//!
//! Asserted per event: the app took it at least once; and a second copy only
//! where the documented window explains it, at most once per `kill -9`:
//! either a `kill -9` came after the app had taken the event (it was in the
//! app's hands, or its 2xx was not yet recorded), or one of Persona's
//! attempts was sent to a process that was then killed before it answered
//! (it may have stored the entry without Persona hearing 202: Persona tries
//! again while the spool delivers its copy, and the memory store of a later
//! process no longer knows the spool's copy went out). SIGTERM never explains
//! a copy.
//!
//! Bounded: `RUNS` runs of `EVENTS` events, each run within `RUN_DEADLINE`.
//! Seeded: `PG_FAULT_SEED` (decimal or `0x` hex) replays a run's choices; the
//! seed is printed first. What a seed cannot fix is how the proxy's threads,
//! the app and Persona interleave.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::spool::{accepted_counts, spool_series, spooling};

const RUNS: u64 = 10;
const EVENTS: usize = 20;
const RUN_DEADLINE: Duration = Duration::from_secs(40);

/// What one run did, for the summary line.
#[derive(Debug, Default)]
struct Run {
    mode: &'static str,
    fsync_delay_ms: u64,
    sigterms: u32,
    kills: u32,
    app_failures: u32,
    /// Events the app took twice, each explained by a kill.
    doubled: usize,
}

#[test]
fn randomized_faults_lose_nothing_and_double_only_in_the_documented_window() {
    // A fixed default, so that CI replays one known run; any other seed
    // through PG_FAULT_SEED.
    let seed = seed_from("PG_FAULT_SEED", 0x18ef_00bf_1f79_f817);
    eprintln!("spool fault run: seed {seed:#x} (PG_FAULT_SEED={seed:#x} replays its choices)");
    let runs: Vec<Run> = (0..RUNS).map(|i| one_run(seed, i)).collect();
    let total = |f: fn(&Run) -> u64| runs.iter().map(f).sum::<u64>();
    eprintln!(
        "spool fault run (seed {seed:#x}): {RUNS} runs x {EVENTS} events, {} SIGTERM, {} kill -9, {} app failure periods; every event delivered, {} second copies, each after a kill -9 that came once the app had it or cut one of Persona's attempts",
        total(|r| r.sigterms.into()),
        total(|r| r.kills.into()),
        total(|r| r.app_failures.into()),
        total(|r| r.doubled as u64),
    );
    for (i, r) in runs.iter().enumerate() {
        eprintln!("  run {i}: {r:?}");
    }
}

fn one_run(seed: u64, run: u64) -> Run {
    let mut rng = Rng::new(seed, run);
    let mut stats = Run {
        mode: if rng.percent() < 50 {
            "always"
        } else {
            "on_failure"
        },
        fsync_delay_ms: [0, 5, 40][rng.below(3) as usize],
        ..Run::default()
    };
    let ctx = format!("seed {seed:#x}, run {run}");
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let secret = secret();
    let delay = stats.fsync_delay_ms.to_string();
    let make = |up: &Upstream| {
        spooling(
            Proxy::builder().upstream(up).secrets(vec![secret.clone()]),
            dir.path(),
            stats.mode,
        )
        .set("spool.max_backoff", "1s")
        .set("server.grace_period", "10s")
        .faults(&[("PG_FAULT_FSYNC_DELAY_MS", &delay)])
        .start()
    };
    let mut p = make(&up);
    let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(Some(p.listen)));
    // Persona's attempts sent whole but never answered: (event, address).
    let unanswered: Arc<Mutex<Vec<(String, SocketAddr)>>> = Arc::default();
    let mut killed: HashSet<SocketAddr> = HashSet::new();
    let ids: Vec<String> = (0..EVENTS).map(|_| event_id()).collect();
    let persona = {
        let (target, secret, unanswered) = (target.clone(), secret.clone(), unanswered.clone());
        let events: VecDeque<(String, Vec<u8>)> = ids
            .iter()
            .map(|id| (id.clone(), event_body(id, "inquiry.approved")))
            .collect();
        thread::spawn(move || persona(events, &target, &secret, &unanswered))
    };

    // Faults: at least `steps` of them, and until Persona has a 2xx for
    // every event.
    let mut taken_before_kill: HashSet<String> = HashSet::new();
    up.set_delay(Duration::from_millis(rng.below(300)));
    let steps = 10 + rng.below(10);
    let mut step = 0;
    while step < steps || !persona.is_finished() {
        step += 1;
        thread::sleep(Duration::from_millis(50 + rng.below(250)));
        match rng.percent() {
            0..=19 => {
                up.set_status(500);
                stats.app_failures += 1;
            }
            20..=49 => {
                up.set_status(200);
                up.set_delay(Duration::from_millis(rng.below(400)));
            }
            50..=64 => {
                *target.lock().unwrap() = None;
                let st = p
                    .terminate(Duration::from_secs(15))
                    .unwrap_or_else(|| panic!("no exit within the grace period ({ctx})"));
                assert!(st.success(), "SIGTERM exit {st:?} ({ctx})\n{}", p.logs());
                stats.sigterms += 1;
                p = make(&up);
                *target.lock().unwrap() = Some(p.listen);
            }
            65..=79 => {
                *target.lock().unwrap() = None;
                killed.insert(p.listen);
                let conns = connections_to(p.pid(), up.addr);
                kill("KILL", p.pid());
                p.wait_exit(Duration::from_secs(5)).expect("killed");
                // What the dead process wrote to the app may still sit in
                // its socket buffers: wait until the app has read it all
                // (its connections from the dead process closed), then note
                // what it had taken by the kill.
                up.wait_closed(&conns);
                taken_before_kill.extend(up.accepted_ids());
                stats.kills += 1;
                p = make(&up);
                *target.lock().unwrap() = Some(p.listen);
            }
            _ => {}
        }
    }
    if let Err(unsettled) = persona.join().unwrap() {
        panic!("Persona got no 2xx for {unsettled:?} within {RUN_DEADLINE:?} ({ctx})");
    }

    // Everything answered 202 reaches the app once it is healthy.
    up.set_status(200);
    up.set_delay(Duration::ZERO);
    let all = wait_until(Duration::from_secs(30), || {
        let got: HashSet<String> = up.accepted_ids().into_iter().collect();
        ids.iter().all(|id| got.contains(id))
    });
    let counts: HashMap<String, usize> = accepted_counts(&up);
    let lost: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        all && lost.is_empty(),
        "lost {lost:?} ({ctx})\n{}",
        p.logs()
    );
    wait_for(format_args!("the spool to empty ({ctx})"), W, || {
        p.metric(&spool_series("depth")) == 0.0
    });
    let cut_by_kill: HashSet<String> = unanswered
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, addr)| killed.contains(addr))
        .map(|(id, _)| id.clone())
        .collect();
    for id in &ids {
        let n = counts[id];
        if n > 1 {
            assert!(
                taken_before_kill.contains(id) || cut_by_kill.contains(id),
                "{id} reached the app {n} times, but no kill -9 came after the app had it or cut Persona's attempt ({ctx}; {stats:?})"
            );
            assert!(
                n <= 1 + stats.kills as usize,
                "{id} reached the app {n} times with {} kill -9 ({ctx})",
                stats.kills
            );
            stats.doubled += 1;
        }
    }
    stats
}

/// Persona: each event in turn, signed afresh per attempt and tried again
/// later until the answer is 2xx; the proxy's address changes on every
/// restart (`None` while it is down). Attempts sent whole that got no answer
/// go to `unanswered`. `Err` with what is still unsettled at the deadline.
fn persona(
    mut pending: VecDeque<(String, Vec<u8>)>,
    target: &Mutex<Option<SocketAddr>>,
    secret: &str,
    unanswered: &Mutex<Vec<(String, SocketAddr)>>,
) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + RUN_DEADLINE;
    while let Some((id, body)) = pending.pop_front() {
        if Instant::now() > deadline {
            pending.push_front((id, body));
            return Err(pending.into_iter().map(|(id, _)| id).collect());
        }
        let addr = *target.lock().unwrap();
        let status = addr.and_then(|a| {
            match try_attempt(a, &delivery(ROUTE, &sign(secret, now(), &body), &body)) {
                Attempt::Answered(r) => Some(r.status),
                Attempt::Unanswered => {
                    unanswered.lock().unwrap().push((id.clone(), a));
                    None
                }
                Attempt::NotSent => None,
            }
        });
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            pending.push_back((id, body));
        }
        // Persona's pace and backoff, compressed: its behaviour, not a poll.
        thread::sleep(Duration::from_millis(60));
    }
    Ok(())
}
