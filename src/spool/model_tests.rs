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

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use proptest::prelude::*;

use super::dir::{DirSpool, route_dir};
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
            Op::Put { route, body, since } => {
                let r = record(ROUTES[route], body, since);
                let id = spool.put(&r).await.unwrap();
                let m = &mut model[route];
                // Newer than every id the route has had.
                assert!(m.live.keys().chain(m.dead.keys()).all(|old| *old < id));
                m.live.insert(id, r);
            }
            Op::Take { route, max } => {
                let got = spool
                    .take(ROUTES[route], max, Duration::ZERO)
                    .await
                    .unwrap();
                let m = &mut model[route];
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
            Op::Remove { route, pick: p } => {
                let m = &mut model[route];
                let id = pick(&m.live, p);
                spool.remove(ROUTES[route], &id).await.unwrap();
                m.live.remove(&id);
                m.handed.remove(&id);
            }
            Op::Bury { route, pick: p } => {
                let m = &mut model[route];
                let id = pick(&m.live, p);
                let res = spool.bury(ROUTES[route], &id).await;
                match m.live.remove(&id) {
                    Some(r) => {
                        res.unwrap();
                        m.handed.remove(&id);
                        m.dead.insert(id, r);
                    }
                    None => assert!(matches!(res, Err(SpoolError::NotFound)), "{res:?}"),
                }
            }
            Op::Revive {
                route,
                pick: p,
                now,
            } => {
                let m = &mut model[route];
                let id = pick(&m.dead, p);
                let res = spool.revive(ROUTES[route], &id, now).await;
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
            Op::DeleteDead { route, pick: p } => {
                let m = &mut model[route];
                let id = pick(&m.dead, p);
                let res = spool.delete_dead(ROUTES[route], &id).await;
                match m.dead.remove(&id) {
                    Some(_) => res.unwrap(),
                    None => assert!(matches!(res, Err(SpoolError::NotFound)), "{res:?}"),
                }
            }
            Op::Restart => {
                drop(spool);
                spool = open();
                for m in &mut model {
                    m.handed.clear();
                }
            }
        }
        for (route, m) in ROUTES.iter().zip(&model) {
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
    // What is live at the end all comes back after one more restart.
    drop(spool);
    let spool = open();
    for (route, m) in ROUTES.iter().zip(&model) {
        let got = spool.take(route, usize::MAX, Duration::ZERO).await.unwrap();
        let ids: Vec<&String> = got.iter().map(|e| &e.id).collect();
        assert_eq!(ids, m.live.keys().collect::<Vec<_>>());
    }
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

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).unwrap() {
        let p = ent.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn files_are_0600_and_dirs_0700() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let route = ROUTES[0];
        let a = spool.put(&record(route, b"a".to_vec(), 1)).await.unwrap();
        spool.put(&record(route, b"b".to_vec(), 2)).await.unwrap();
        spool.bury(route, &a).await.unwrap();
        let rdir = root.join(route_dir(route));
        for d in [
            &root,
            &root.join("tmp"),
            &rdir,
            &rdir.join("live"),
            &rdir.join("dead"),
        ] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        let files = files_under(&root);
        assert_eq!(files.len(), 2);
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    });
}

#[test]
fn open_tightens_a_loose_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("spool");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    DirSpool::open(&root, u64::MAX, None).unwrap();
    assert_eq!(mode(&root), 0o700);
}

#[test]
fn full_spool_refuses_and_writes_nothing() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let r = record(ROUTES[0], vec![7; 100], 1);
        let spool = DirSpool::open(&root, r.size() + 10, None).unwrap();
        assert!(matches!(
            spool.put(&record(ROUTES[0], vec![7; 1000], 1)).await,
            Err(SpoolError::Full)
        ));
        assert!(files_under(&root).is_empty());
        assert!(!root.join(route_dir(ROUTES[0])).exists());
        // One fits; the second does not, live or dead.
        let id = spool.put(&r).await.unwrap();
        spool.bury(ROUTES[0], &id).await.unwrap();
        assert!(matches!(spool.put(&r).await, Err(SpoolError::Full)));
        assert_eq!(files_under(&root).len(), 1);
        // Deleting frees the room; a restart counts the same bytes.
        spool.delete_dead(ROUTES[0], &id).await.unwrap();
        spool.put(&r).await.unwrap();
        drop(spool);
        let spool = DirSpool::open(&root, r.size() + 10, None).unwrap();
        assert_eq!(spool.stats(ROUTES[0]).await.unwrap().bytes, r.size());
        assert!(matches!(spool.put(&r).await, Err(SpoolError::Full)));
    });
}

#[test]
fn unwritable_directory_is_unavailable() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let body = b"the-body-must-not-appear".to_vec();
        spool
            .put(&record(ROUTES[0], body.clone(), 1))
            .await
            .unwrap();
        let live = root.join(route_dir(ROUTES[0])).join("live");
        std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o500)).unwrap();
        // root (and CAP_DAC_OVERRIDE) ignores the mode: nothing to test then.
        let probe = live.join("probe");
        if std::fs::write(&probe, b"x").is_ok() {
            eprintln!("skipped: this user can write a 0500 directory (root?)");
            return;
        }
        let before = spool.stats(ROUTES[0]).await.unwrap();
        let err = spool
            .put(&record(ROUTES[0], body.clone(), 2))
            .await
            .unwrap_err();
        std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o700)).unwrap();
        let SpoolError::Unavailable(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(msg.starts_with("put:"), "{msg}");
        assert!(!msg.contains("the-body"), "{msg}");
        assert_eq!(spool.stats(ROUTES[0]).await.unwrap(), before);
        // The failed write left no temp file behind, and the room is given back.
        assert!(
            std::fs::read_dir(root.join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        spool.put(&record(ROUTES[0], body, 3)).await.unwrap();
        assert_eq!(spool.stats(ROUTES[0]).await.unwrap().depth, 2);
    });
}

/// The same failure where the mode cannot make one (as root): `live` is a
/// file, so the rename into it fails whoever runs the test.
#[test]
fn broken_live_directory_is_unavailable() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let id = spool
            .put(&record(ROUTES[0], b"a".to_vec(), 1))
            .await
            .unwrap();
        spool.remove(ROUTES[0], &id).await.unwrap();
        let live = root.join(route_dir(ROUTES[0])).join("live");
        std::fs::remove_dir(&live).unwrap();
        std::fs::write(&live, b"not a directory").unwrap();
        let err = spool
            .put(&record(ROUTES[0], b"secret-body".to_vec(), 2))
            .await
            .unwrap_err();
        let SpoolError::Unavailable(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(msg.starts_with("put:") && !msg.contains("secret"), "{msg}");
        assert!(
            std::fs::read_dir(root.join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(spool.stats(ROUTES[0]).await.unwrap(), RouteStats::default());
    });
}

#[test]
fn sealed_files_do_not_contain_the_body() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, Some(SpoolKey([3; 32]))).unwrap();
        let body = b"{\"name-first\":\"Alexander\",\"ssn\":\"123-45-6789\"}".to_vec();
        let id = spool
            .put(&record(ROUTES[0], body.clone(), 1))
            .await
            .unwrap();
        spool
            .put(&record(ROUTES[0], body.clone(), 2))
            .await
            .unwrap();
        spool.bury(ROUTES[0], &id).await.unwrap();
        let files = files_under(&root);
        assert_eq!(files.len(), 2);
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert!(!bytes.windows(body.len()).any(|w| w == body.as_slice()));
            assert!(!bytes.windows(11).any(|w| w == b"123-45-6789"));
        }
        let got = spool.take(ROUTES[0], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].record.body, body);
    });
}

#[test]
fn corrupt_file_is_skipped_and_kept() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, Some(SpoolKey([1; 32]))).unwrap();
        let a = spool
            .put(&record(ROUTES[0], b"a".to_vec(), 1))
            .await
            .unwrap();
        let b = spool
            .put(&record(ROUTES[0], b"b".to_vec(), 2))
            .await
            .unwrap();
        let file = root
            .join(route_dir(ROUTES[0]))
            .join("live")
            .join(format!("{a}.entry"));
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();

        let got = spool.take(ROUTES[0], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|e| &e.id).collect::<Vec<_>>(), [&b]);
        assert_eq!(spool.unreadable(), 1);
        assert!(file.exists());
        // Not handed out again, not counted twice.
        drop(got);
        assert!(
            spool
                .take(ROUTES[0], 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(spool.unreadable(), 1);
        assert_eq!(spool.stats(ROUTES[0]).await.unwrap().depth, 1);

        // After a restart: found at open, skipped, still kept.
        drop(spool);
        let spool = DirSpool::open(&root, u64::MAX, Some(SpoolKey([1; 32]))).unwrap();
        assert_eq!(spool.unreadable(), 1);
        let got = spool.take(ROUTES[0], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|e| &e.id).collect::<Vec<_>>(), [&b]);
        assert!(file.exists());

        // Another key: every file unreadable, none deleted.
        drop(spool);
        let spool = DirSpool::open(&root, u64::MAX, Some(SpoolKey([2; 32]))).unwrap();
        assert_eq!(spool.unreadable(), 2);
        assert!(
            spool
                .take(ROUTES[0], 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(files_under(&root).len(), 2);
        // A plain spool does not read sealed files either.
        drop(spool);
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        assert_eq!(spool.unreadable(), 2);
    });
}

#[test]
fn foreign_ids_name_no_file() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let id = spool
            .put(&record(ROUTES[0], b"a".to_vec(), 1))
            .await
            .unwrap();
        spool.bury(ROUTES[0], &id).await.unwrap();
        for bad in [
            "../live/x",
            "",
            "x",
            &format!("../dead/{id}"),
            &id.to_uppercase(),
        ] {
            let bad = bad.to_string();
            assert!(matches!(
                spool.delete_dead(ROUTES[0], &bad).await,
                Err(SpoolError::NotFound)
            ));
            assert!(matches!(
                spool.revive(ROUTES[0], &bad, 5).await,
                Err(SpoolError::NotFound)
            ));
            assert!(matches!(
                spool.bury(ROUTES[0], &bad).await,
                Err(SpoolError::NotFound)
            ));
            spool.remove(ROUTES[0], &bad).await.unwrap();
        }
        // The other route does not see this route's entries.
        assert!(matches!(
            spool.delete_dead(ROUTES[1], &id).await,
            Err(SpoolError::NotFound)
        ));
        assert_eq!(spool.dead(ROUTES[0]).await.unwrap().len(), 1);
    });
}

#[test]
fn leftover_temp_files_are_cleared_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("spool");
    drop(DirSpool::open(&root, u64::MAX, None).unwrap());
    std::fs::write(root.join("tmp").join("half-written.tmp"), b"x").unwrap();
    DirSpool::open(&root, u64::MAX, None).unwrap();
    assert!(
        std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn ids_sort_by_time_and_are_unique() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let spool = DirSpool::open(&tmp.path().join("s"), u64::MAX, None).unwrap();
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(
                spool
                    .put(&record(ROUTES[i % 2], vec![], i as u64))
                    .await
                    .unwrap(),
            );
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
    });
}

#[test]
fn a_dropped_take_hands_nothing_out() {
    // One blocking thread, kept busy: the take's read cannot finish before
    // the take is dropped.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let spool = DirSpool::open(&tmp.path().join("s"), u64::MAX, None).unwrap();
        let id = spool
            .put(&record(ROUTES[0], b"a".to_vec(), 1))
            .await
            .unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || wait.recv());
        // Polled once (it marks the entry and queues the read), then dropped.
        let mut take = spool.take(ROUTES[0], 10, Duration::ZERO);
        let first = std::future::poll_fn(|cx| Poll::Ready(take.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        drop(take);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        let got = spool.take(ROUTES[0], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert!(
            spool
                .take(ROUTES[0], 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
    });
}
