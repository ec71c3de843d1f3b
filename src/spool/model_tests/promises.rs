//! The embedded spool's own promises (see the parent module): permissions,
//! `max_bytes`, errors, sealed files, unreadable files, ids.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use super::{ROUTES, record, runtime};
use crate::config::SpoolKey;
use crate::spool::dir::{DirSpool, route_dir};
use crate::spool::{RouteStats, SpoolError, SpoolStore};

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
        // A capital hex digit: `id.to_uppercase()` is `id` itself when the
        // random suffix happens to be all decimal digits.
        let capital = format!("{}F", &id[..id.len() - 1]);
        for bad in ["../live/x", "", "x", &format!("../dead/{id}"), &capital] {
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

/// Anything in a route's `live/` that is not a readable entry of that route
/// stops neither `open` nor the other entries: it is counted per route
/// directory, kept, and never handed out.
#[test]
fn foreign_things_in_live_are_unreadable_and_stop_nothing() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let good = spool
            .put(&record(ROUTES[0], b"good".to_vec(), 1))
            .await
            .unwrap();
        let other = spool
            .put(&record(ROUTES[1], b"other".to_vec(), 2))
            .await
            .unwrap();
        drop(spool);
        let live = root.join(route_dir(ROUTES[0])).join("live");
        // A directory named like an entry, a file with a foreign name, a
        // truncated entry, and an entry of another route in this one's dir.
        std::fs::create_dir(live.join("00000000000000000005-0000000a.entry")).unwrap();
        std::fs::write(live.join("notes.txt"), b"hello").unwrap();
        let good_file = live.join(format!("{good}.entry"));
        let bytes = std::fs::read(&good_file).unwrap();
        std::fs::write(
            live.join("00000000000000000006-0000000a.entry"),
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
        std::fs::copy(
            root.join(route_dir(ROUTES[1]))
                .join("live")
                .join(format!("{other}.entry")),
            live.join("00000000000000000007-0000000a.entry"),
        )
        .unwrap();
        // A route directory that is a file.
        std::fs::write(root.join(route_dir("/gone")), b"x").unwrap();

        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let stats = spool.stats(ROUTES[0]).await.unwrap();
        assert_eq!((stats.depth, stats.unreadable), (1, 4), "{stats:?}");
        assert_eq!(spool.stats(ROUTES[1]).await.unwrap().unreadable, 0);
        assert_eq!(spool.unreadable(), 5);
        let got = spool.take(ROUTES[0], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|e| &e.id).collect::<Vec<_>>(), [&good]);
        let got = spool.take(ROUTES[1], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|e| &e.id).collect::<Vec<_>>(), [&other]);
        spool.remove(ROUTES[0], &good).await.unwrap();
        // Everything foreign is still there.
        assert!(live.join("00000000000000000005-0000000a.entry").is_dir());
        assert!(live.join("notes.txt").exists());
        assert_eq!(files_under(&live).len(), 3);
        assert_eq!(spool.stats(ROUTES[0]).await.unwrap().unreadable, 4);
    });
}
