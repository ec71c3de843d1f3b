//! [`DirSpool`] against a model of what the [`SpoolStore`] contract says,
//! and the embedded spool's own promises (permissions, `max_bytes`, errors,
//! sealed files, unreadable files).
//!
//! The model is a map per route (live, dead, handed out): ids order entries by
//! age, so a `BTreeMap` keyed by id is "oldest first". A run drives both with
//! the same random operations, crash-and-restart among them (the `DirSpool`
//! dropped and the directory opened again: everything live comes back through
//! `take`, dead stays dead, the bytes are the same), and compares every answer
//! and the stats after every step.
//!
//! The embedded spool's own promises are tested in `promises`, and
//! *delivered means gone* in `gone`.

mod gone;
mod promises;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::dir::DirSpool;
use super::{Entry, Record, RouteStats, SpoolError, SpoolStore};
use crate::config::SpoolKey;

const ROUTES: [&str; 2] = ["/webhooks/persona", "/hooks/other"];
/// A well-formed id no entry has.
const NO_SUCH_ID: &str = "00000000000000000001-00000000";

fn record(route: &str, body: Vec<u8>, since: u64) -> Record {
    Record {
        route: route.into(),
        replay_id: format!("evt_{since}"),
        event_id: Some(format!("evt_{since}")),
        event_type: Some("inquiry.completed".into()),
        token: since ^ 0x5555,
        spooled_at_ms: since,
        live_since_ms: since,
        head: b"POST /webhooks/persona HTTP/1.1\r\nContent-Length: 3\r\n\r\n".to_vec(),
        body,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        route: usize,
        body: Vec<u8>,
        since: u64,
    },
    Take {
        route: usize,
        max: usize,
    },
    Remove {
        route: usize,
        pick: Option<usize>,
    },
    Bury {
        route: usize,
        pick: Option<usize>,
    },
    Revive {
        route: usize,
        pick: Option<usize>,
        now: u64,
    },
    DeleteDead {
        route: usize,
        pick: Option<usize>,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let route = 0..ROUTES.len();
    // `None`: an id that is not there.
    let pick = prop::option::weighted(0.85, 0..8usize);
    prop_oneof![
        4 => (route.clone(), prop::collection::vec(any::<u8>(), 0..48), 0..1_000u64)
            .prop_map(|(route, body, since)| Op::Put { route, body, since }),
        3 => (route.clone(), 0..4usize).prop_map(|(route, max)| Op::Take { route, max }),
        2 => (route.clone(), pick.clone()).prop_map(|(route, pick)| Op::Remove { route, pick }),
        2 => (route.clone(), pick.clone()).prop_map(|(route, pick)| Op::Bury { route, pick }),
        1 => (route.clone(), pick.clone(), 1_000..2_000u64)
            .prop_map(|(route, pick, now)| Op::Revive { route, pick, now }),
        1 => (route, pick).prop_map(|(route, pick)| Op::DeleteDead { route, pick }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Default)]
struct RouteModel {
    live: BTreeMap<String, Record>,
    dead: BTreeMap<String, Record>,
    handed: HashSet<String>,
}

impl RouteModel {
    fn stats(&self) -> RouteStats {
        RouteStats {
            depth: self.live.len() as u64,
            oldest_live_ms: self.live.values().map(|r| r.live_since_ms).min(),
            dead: self.dead.len() as u64,
            bytes: self
                .live
                .values()
                .chain(self.dead.values())
                .map(Record::size)
                .sum(),
            unreadable: 0,
        }
    }
}

fn pick(ids: &BTreeMap<String, Record>, pick: Option<usize>) -> String {
    match pick {
        Some(i) if !ids.is_empty() => ids.keys().nth(i % ids.len()).unwrap().clone(),
        _ => NO_SUCH_ID.to_owned(),
    }
}

async fn run(ops: Vec<Op>, key: Option<SpoolKey>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let open = || DirSpool::open(&path, u64::MAX, key.clone()).unwrap();
    let mut spool = open();
    let mut model: Vec<RouteModel> = ROUTES.iter().map(|_| RouteModel::default()).collect();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Restart => {
                drop(spool);
                spool = open();
                for m in &mut model {
                    m.handed.clear();
                }
            }
            op => apply(&spool, &mut model, step, op).await,
        }
        check(&spool, &model, step).await;
    }
    // What is live at the end all comes back after one more restart.
    drop(spool);
    let spool = open();
    for (route, m) in ROUTES.iter().zip(&model) {
        let got = spool.take(route, usize::MAX, Duration::ZERO).await.unwrap();
        let ids: Vec<&String> = got.iter().map(|e| &e.id).collect();
        assert_eq!(ids, m.live.keys().collect::<Vec<_>>());
    }
}

/// Runs `op` (anything but a restart, which [`run`] does) on `spool` and
/// on `model`, and compares the answers.
async fn apply(spool: &DirSpool, model: &mut [RouteModel], step: usize, op: Op) {
    match op {
        Op::Put { route, body, since } => {
            let r = record(ROUTES[route], body, since);
            let id = spool.put(&r).await.unwrap();
            let m = &mut model[route];
            // Newer than every id the route has had.
            assert!(m.live.keys().chain(m.dead.keys()).all(|old| *old < id));
            m.live.insert(id, r);
        }
        Op::Take { route, max } => take(spool, &mut model[route], ROUTES[route], max, step).await,
        Op::Remove { route, pick: p } => {
            let m = &mut model[route];
            let id = pick(&m.live, p);
            spool.remove(ROUTES[route], &id).await.unwrap();
            m.live.remove(&id);
            m.handed.remove(&id);
        }
        Op::Bury { route, pick: p } => bury(spool, &mut model[route], ROUTES[route], p).await,
        Op::Revive {
            route,
            pick: p,
            now,
        } => revive(spool, &mut model[route], ROUTES[route], p, now).await,
        Op::DeleteDead { route, pick: p } => {
            let m = &mut model[route];
            let id = pick(&m.dead, p);
            let res = spool.delete_dead(ROUTES[route], &id).await;
            match m.dead.remove(&id) {
                Some(_) => res.unwrap(),
                None => assert!(matches!(res, Err(SpoolError::NotFound)), "{res:?}"),
            }
        }
        Op::Restart => unreachable!("run restarts the spool itself"),
    }
}

async fn take(spool: &DirSpool, m: &mut RouteModel, route: &str, max: usize, step: usize) {
    let got = spool.take(route, max, Duration::ZERO).await.unwrap();
    let want: Vec<Entry> = m
        .live
        .iter()
        .filter(|(id, _)| !m.handed.contains(*id))
        .take(max)
        .map(|(id, r)| Entry {
            id: id.clone(),
            record: r.clone(),
        })
        .collect();
    assert_eq!(got, want, "step {step}: take");
    m.handed.extend(want.into_iter().map(|e| e.id));
}

async fn bury(spool: &DirSpool, m: &mut RouteModel, route: &str, p: Option<usize>) {
    let id = pick(&m.live, p);
    let res = spool.bury(route, &id).await;
    match m.live.remove(&id) {
        Some(r) => {
            res.unwrap();
            m.handed.remove(&id);
            m.dead.insert(id, r);
        }
        None => assert!(matches!(res, Err(SpoolError::NotFound)), "{res:?}"),
    }
}

async fn revive(spool: &DirSpool, m: &mut RouteModel, route: &str, p: Option<usize>, now: u64) {
    let id = pick(&m.dead, p);
    let res = spool.revive(route, &id, now).await;
    match m.dead.remove(&id) {
        Some(mut r) => {
            let new_id = res.unwrap();
            assert!(m.live.keys().all(|old| *old < new_id));
            r.live_since_ms = now;
            m.live.insert(new_id, r);
        }
        None => assert!(matches!(res, Err(SpoolError::NotFound)), "{res:?}"),
    }
}

/// After every step: the stats and the dead letters of every route are the
/// model's, and nothing was unreadable.
async fn check(spool: &DirSpool, model: &[RouteModel], step: usize) {
    for (route, m) in ROUTES.iter().zip(model) {
        assert_eq!(
            spool.stats(route).await.unwrap(),
            m.stats(),
            "step {step}: stats of {route}"
        );
        let dead = spool.dead(route).await.unwrap();
        let want: Vec<Entry> = m
            .dead
            .iter()
            .map(|(id, r)| Entry {
                id: id.clone(),
                record: r.clone(),
            })
            .collect();
        assert_eq!(dead, want, "step {step}: dead of {route}");
    }
    assert_eq!(spool.unreadable(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn dir_spool_follows_the_model(
        ops in prop::collection::vec(op(), 1..30),
        sealed in any::<bool>(),
    ) {
        let key = sealed.then_some(SpoolKey([9; 32]));
        runtime().block_on(run(ops, key));
    }
}
