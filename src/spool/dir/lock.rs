//! One process per spool directory (see [`super`]): an exclusive lock on
//! `<dir>/lock`, held for the life of the process that uses the spool.
//!
//! Two processes on one directory would both hand out, and so both deliver,
//! every entry (a rolling update on a shared volume starts the new pod before
//! the old one has gone). The lock is an advisory `flock` on a file of its
//! own, taken before anything in the directory is read or changed (the
//! leftover temp files are cleared only by the lock's holder). The kernel
//! drops it when its holder exits, however it exits (`kill -9` included), so
//! a crash never leaves a stale lock behind; a lock file left on disk is
//! harmless.
//!
//! The lock is the directory's, not the spool's path: two spellings of one
//! directory (a symlink, `..`) meet on the same file. It is not honoured
//! across machines on a network filesystem that does not pass `flock` on
//! (older NFS): `docs/spool.md` (Rolling deploys) says to give each pod its own volume.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::spool::SpoolError;

/// The lock file's name in the spool directory.
pub const LOCK_FILE: &str = "lock";

/// The held lock on one spool directory; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (created, mode 0700, when missing) if no other
    /// process holds it; `Ok(None)` when one does.
    pub fn try_acquire(dir: &Path) -> Result<Option<DirLock>, SpoolError> {
        let (file, path) = open(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DirLock { _file: file, path })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(failed("lock", &e)),
        }
    }

    /// Waits until the lock on `dir` is free and takes it (blocking: call it
    /// on a thread of its own).
    pub fn acquire(dir: &Path) -> Result<DirLock, SpoolError> {
        let (file, path) = open(dir)?;
        file.lock().map_err(|e| failed("lock", &e))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(dir: &Path) -> Result<(File, PathBuf), SpoolError> {
    DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(|e| failed("create spool dir", &e))?;
    let path = dir.join(LOCK_FILE);
    // Created once, then held open read-only: `flock` needs no write access,
    // and a file held open for writing would keep the volume from being
    // remounted read-only (an operator's or a failing disk's remount).
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| failed("create lock file", &e))?;
            File::open(&path).map_err(|e| failed("open lock file", &e))?
        }
        Err(e) => return Err(failed("open lock file", &e)),
    };
    Ok((file, path))
}

fn failed(op: &str, e: &io::Error) -> SpoolError {
    SpoolError::Unavailable(format!("{op}: {}", e.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let first = DirLock::try_acquire(&spool).unwrap().expect("free");
        assert!(first.path().ends_with(LOCK_FILE));
        // flock locks belong to the open file: a second open, even in this
        // process, is a second holder, as another process would be.
        assert!(DirLock::try_acquire(&spool).unwrap().is_none());
        let waiter = std::thread::spawn({
            let spool = spool.clone();
            move || DirLock::acquire(&spool).unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "took a held lock");
        drop(first);
        let second = waiter.join().unwrap();
        assert!(DirLock::try_acquire(&spool).unwrap().is_none());
        drop(second);
        assert!(DirLock::try_acquire(&spool).unwrap().is_some());
    }
}
