//! *Delivered means gone* in the embedded spool (see the parent module):
//! tombstones honoured at open, and a delivered entry whose file cannot be
//! removed never handed out again.

use std::path::Path;
use std::time::Duration;

use super::{ROUTES, record, runtime};
use crate::spool::SpoolStore;
use crate::spool::dir::{DirSpool, route_dir};

/// A live entry with a tombstone in `done/` was delivered: `open` removes
/// it unsent, and the tombstone with it; a stale tombstone goes too.
#[test]
fn a_tombstoned_entry_is_removed_unsent_at_open() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let delivered = spool
            .put(&record(ROUTES[0], b"a".to_vec(), 1))
            .await
            .unwrap();
        let waiting = spool
            .put(&record(ROUTES[0], b"b".to_vec(), 2))
            .await
            .unwrap();
        drop(spool);
        let rdir = root.join(route_dir(ROUTES[0]));
        std::fs::create_dir(rdir.join("done")).unwrap();
        std::fs::write(rdir.join("done").join(&delivered), b"").unwrap();
        std::fs::write(rdir.join("done").join(NO_SUCH), b"").unwrap();

        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let got = spool.take(ROUTES[0], 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|e| &e.id).collect::<Vec<_>>(), [&waiting]);
        assert!(
            !rdir
                .join("live")
                .join(format!("{delivered}.entry"))
                .exists()
        );
        assert_eq!(std::fs::read_dir(rdir.join("done")).unwrap().count(), 0);
        let stats = spool.stats(ROUTES[0]).await.unwrap();
        assert_eq!((stats.depth, stats.unreadable), (1, 0));
    });
}

const NO_SUCH: &str = "00000000000000000002-00000000";

/// `chattr +i` on a directory: it refuses every change, even root's. Undone
/// on drop. `None` where that is refused (not root, no attribute support).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Immutable(path.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .output();
    }
}

/// A delivered entry whose file cannot be removed is never handed out
/// again: with a tombstone when `done/` can be written, in memory when not,
/// and both files go once the disk lets them.
#[test]
fn a_delivered_entry_that_cannot_be_removed_is_never_handed_out_again() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let route = ROUTES[0];
        let a = spool.put(&record(route, b"a".to_vec(), 1)).await.unwrap();
        let b = spool.put(&record(route, b"b".to_vec(), 2)).await.unwrap();
        assert_eq!(
            spool.take(route, 10, Duration::ZERO).await.unwrap().len(),
            2
        );
        let rdir = root.join(route_dir(route));
        let (live, done) = (rdir.join("live"), rdir.join("done"));
        let Some(live_guard) = Immutable::set(&live) else {
            eprintln!(
                "skipped: chattr +i is refused here (needs root and a filesystem with attributes)"
            );
            return;
        };
        // The removal fails; the tombstone records the delivery.
        spool.remove(route, &a).await.unwrap();
        assert!(done.join(&a).exists());
        // Neither removal nor tombstone: only memory remembers it.
        let done_guard = Immutable::set(&done).unwrap();
        assert!(spool.remove(route, &b).await.is_err());
        assert!(!done.join(&b).exists());
        assert_eq!(std::fs::read_dir(&live).unwrap().count(), 2);
        assert!(
            spool
                .take(route, 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        let stats = spool.stats(route).await.unwrap();
        assert_eq!((stats.depth, stats.unreadable), (0, 0));
        // The disk lets go: the next take removes both, tombstone too.
        drop((live_guard, done_guard));
        assert!(
            spool
                .take(route, 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(std::fs::read_dir(&live).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&done).unwrap().count(), 0);
    });
}

/// A tombstoned entry that `open` cannot remove is still never handed out;
/// a later take removes it once the disk lets it.
#[test]
fn a_tombstoned_entry_open_cannot_remove_is_not_handed_out() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let route = ROUTES[0];
        let a = spool.put(&record(route, b"a".to_vec(), 1)).await.unwrap();
        let b = spool.put(&record(route, b"b".to_vec(), 2)).await.unwrap();
        drop(spool);
        let rdir = root.join(route_dir(route));
        std::fs::create_dir(rdir.join("done")).unwrap();
        std::fs::write(rdir.join("done").join(&a), b"").unwrap();
        let Some(guard) = Immutable::set(&rdir.join("live")) else {
            eprintln!(
                "skipped: chattr +i is refused here (needs root and a filesystem with attributes)"
            );
            return;
        };
        let spool = DirSpool::open(&root, u64::MAX, None).unwrap();
        let got = spool.take(route, 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|e| &e.id).collect::<Vec<_>>(), [&b]);
        let stats = spool.stats(route).await.unwrap();
        assert_eq!((stats.depth, stats.unreadable), (1, 0));
        drop(guard);
        spool.take(route, 10, Duration::ZERO).await.unwrap();
        assert!(!rdir.join("live").join(format!("{a}.entry")).exists());
        assert!(!rdir.join("done").join(&a).exists());
    });
}
