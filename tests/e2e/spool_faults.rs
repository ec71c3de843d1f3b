//! The embedded spool on a failing disk (`docs/behaviour.md` § Delivery
//! spool, "One bad entry stops nothing" and "Delivered means gone"): an
//! entry that cannot be read is skipped, kept and shown, and stops neither
//! the start nor any other entry; a recorded delivery is never sent again,
//! whatever fails on removal; a failed flush after a write leaves nothing
//! behind that the answer without 202 did not promise.
//!
//! Faults are injected into the real binary by a small `LD_PRELOAD` shim
//! (`tests/shim/faults.c`, compiled by the harness with `cc`), since permission bits do not
//! stop root; the read-only disk of the window test is a tmpfs remounted
//! read-only (skipped, with a message, where mounting is refused).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::*;
use crate::spool::{accepted_counts, fallbacks, spool_series, spooling, wait_accepted};

/// How long redeliveries may take here: the worker's backoff after the app
/// was down reaches a few seconds.
const REDELIVERED: Duration = Duration::from_secs(30);

/// Faults for one proxy: the shim's rules file (rewritten while the proxy
/// runs) and the log of every fault it injected.
struct Faults {
    dir: tempfile::TempDir,
}

impl Faults {
    fn new() -> Faults {
        let f = Faults {
            dir: tempfile::tempdir().unwrap(),
        };
        f.set(&[]);
        f
    }

    fn rules(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("fired")
    }

    /// Replaces the rules (`<op> <errno> <path substring>`), atomically.
    fn set(&self, rules: &[&str]) {
        let tmp = self.dir.path().join("rules.new");
        let mut text = rules.join("\n");
        text.push('\n');
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.rules()).unwrap();
    }

    /// The faults injected so far, one `<op> <path>` a line.
    fn fired(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// `b` with the shim loaded and these rules.
    fn load(&self, b: ProxyBuilder) -> ProxyBuilder {
        b.env("LD_PRELOAD", shim().to_str().unwrap())
            .env("PG_FAULTS", self.rules().to_str().unwrap())
            .env("PG_FAULTS_LOG", self.log().to_str().unwrap())
    }
}

const EIO: i32 = 5;
const EROFS: i32 = 30;

/// The route's directory in the spool at `spool`.
fn route_dir(spool: &Path) -> PathBuf {
    spool.join(hex::encode(&Sha256::digest(ROUTE.as_bytes())[..16]))
}

fn live(spool: &Path) -> PathBuf {
    route_dir(spool).join("live")
}

/// The names in `dir`, sorted (none when it is absent).
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The entry files in `live/`, oldest first.
fn entries(spool: &Path) -> Vec<PathBuf> {
    let dir = live(spool);
    names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".entry"))
        .map(|n| dir.join(n))
        .collect()
}

/// `GET /spool`'s line for the route.
fn listed(p: &Proxy) -> serde_json::Value {
    let r = p.admin_get("/spool");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["routes"][0].clone()
}

fn unreadable_series() -> String {
    spool_series("unreadable_entries")
}

fn sealed(b: ProxyBuilder, key: &str) -> ProxyBuilder {
    b.set("spool.key", "env:PERSONA_GUARD_SPOOL_KEY")
        .env("PERSONA_GUARD_SPOOL_KEY", key)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Delivers a new event, answered 202 `spooled`; its id.
fn spool_one(p: &Proxy) -> String {
    let id = event_id();
    p.deliver(&event_body(&id, "inquiry.approved"))
        .assert_status_json(202, "spooled");
    id
}

/// An entry whose file fails to open (EIO) while the proxy runs: the four
/// others of the route and every later delivery reach the app; the file is
/// kept, logged by name once (not on every poll), and shown as unreadable.
#[test]
fn an_entry_that_cannot_be_opened_stops_no_other_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let faults = Faults::new();
    // The first entry file the proxy opens fails with EIO, then and ever after.
    faults.set(&[&format!("open1 {EIO} .entry")]);
    let (mut up, p) = rig_with(|b| faults.load(spooling(b, &spool, "always")));
    up.stop();
    let ids: Vec<String> = (0..5).map(|_| spool_one(&p)).collect();
    wait_for("the shim to fail an entry's open", W, || {
        !faults.fired().is_empty()
    });
    let fired = faults.fired();
    let bad_path = fired.lines().next().unwrap().split_once(' ').unwrap().1;
    let bad_name = Path::new(bad_path).file_name().unwrap().to_str().unwrap();
    // A plain spool: the entry's event id is in its file.
    let bytes = fs::read(bad_path).unwrap();
    let bad_id = ids
        .iter()
        .find(|id| contains(&bytes, id.as_bytes()))
        .expect("the failing file is one of the five")
        .clone();
    let good: Vec<String> = ids.iter().filter(|id| **id != bad_id).cloned().collect();
    up.restart();
    wait_accepted(&up, &good, REDELIVERED);
    let later: Vec<String> = (0..3).map(|_| spool_one(&p)).collect();
    wait_accepted(&up, &later, REDELIVERED);

    p.wait_for_metric(&unreadable_series(), 1.0);
    let route = listed(&p);
    assert_eq!(route["unreadable"], 1, "{route}");
    assert_eq!(route["depth"], 0, "{route}");
    assert!(
        Path::new(bad_path).exists(),
        "the unreadable file was deleted"
    );
    let counts = accepted_counts(&up);
    assert!(
        !counts.contains_key(&bad_id),
        "the unreadable entry was sent"
    );
    assert!(
        good.iter().chain(&later).all(|id| counts[id] == 1),
        "{counts:?}"
    );
    let logs = p.logs();
    let named: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(bad_name) && l.contains("cannot be read"))
        .collect();
    assert_eq!(named.len(), 1, "the file logged other than once: {named:?}");
    assert!(!logs.contains("cannot take entries"), "{logs}");
    eprintln!(
        "EIO on one entry: {} delivered, 1 kept as unreadable",
        good.len() + later.len()
    );
}

/// A start with broken entries in the spool (a truncated file, one that
/// fails to open, a directory named like an entry, another key's entry):
/// the proxy starts, delivers the good ones once, and shows four unreadable.
#[test]
fn a_start_with_broken_entries_starts_delivers_the_rest_and_shows_them() {
    let (key, other_key) = ("3c".repeat(32), "c3".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // An entry sealed with another key, from another spool.
    let elsewhere = dir.path().join("elsewhere");
    let foreign = {
        let (mut up, p) = rig_with(|b| sealed(spooling(b, &elsewhere, "always"), &other_key));
        up.stop();
        let id = spool_one(&p);
        drop(p);
        id
    };
    let (mut up, p) = rig_with(|b| sealed(spooling(b, &spool, "always"), &key));
    up.stop();
    let ids: Vec<String> = (0..5).map(|_| spool_one(&p)).collect();
    drop(p); // SIGKILL
    let files = entries(&spool);
    assert_eq!(files.len(), 5);
    // Ids sort by the time they were stored: files[i] holds ids[i].
    let truncated = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &truncated[..truncated.len() / 2]).unwrap();
    let failing = files[1].file_name().unwrap().to_str().unwrap().to_string();
    fs::create_dir(live(&spool).join("00000000000000000001-deadbeef.entry")).unwrap();
    fs::copy(
        &entries(&elsewhere)[0],
        live(&spool).join("00000000000000000002-deadbeef.entry"),
    )
    .unwrap();
    let faults = Faults::new();
    faults.set(&[&format!("open {EIO} {failing}")]);

    up.restart();
    let p = faults
        .load(sealed(
            spooling(Proxy::builder().upstream(&up), &spool, "always"),
            &key,
        ))
        .start();
    assert!(faults.fired().contains(&failing), "the shim did not fire");
    wait_accepted(&up, &ids[2..], REDELIVERED);
    p.wait_for_metric(&unreadable_series(), 4.0);
    let route = listed(&p);
    assert_eq!(
        (route["unreadable"].as_u64(), route["depth"].as_u64()),
        (Some(4), Some(0)),
        "{route}"
    );
    let counts = accepted_counts(&up);
    for id in [&ids[0], &ids[1], &foreign] {
        assert!(!counts.contains_key(id), "{id} was sent");
    }
    assert!(ids[2..].iter().all(|id| counts[id] == 1), "{counts:?}");
    // Kept: the three broken files and the directory.
    assert_eq!(names(&live(&spool)).len(), 4, "{:?}", names(&live(&spool)));
}

/// A restart with the wrong key: the entries answered 202 are not invisible
/// (depth 0 and every gauge 0, as before) but unreadable, kept; the right
/// key delivers them.
#[test]
fn a_restart_with_the_wrong_key_shows_every_entry_as_unreadable() {
    let (key, wrong) = ("5a".repeat(32), "a5".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (mut up, p) = rig_with(|b| sealed(spooling(b, &spool, "always"), &key));
    up.stop();
    let ids: Vec<String> = (0..4).map(|_| spool_one(&p)).collect();
    drop(p);
    up.restart();
    let p = sealed(
        spooling(Proxy::builder().upstream(&up), &spool, "always"),
        &wrong,
    )
    .start();
    let route = listed(&p);
    assert_eq!(
        (route["unreadable"].as_u64(), route["depth"].as_u64()),
        (Some(4), Some(0)),
        "{route}"
    );
    assert_eq!(p.metric(&unreadable_series()), 4.0);
    assert_eq!(entries(&spool).len(), 4);
    assert!(!p.logs().contains(&wrong) && !p.logs().contains(&key));
    drop(p);
    let _p = sealed(
        spooling(Proxy::builder().upstream(&up), &spool, "always"),
        &key,
    )
    .start();
    wait_accepted(&up, &ids, REDELIVERED);
    let counts = accepted_counts(&up);
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
}

/// A flipped byte in a plain entry's body: before, it was delivered (with
/// the trusted headers) as it now read; the checksum makes it unreadable.
#[test]
fn a_flipped_byte_in_a_plain_entry_is_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (mut up, p) = rig_with(|b| spooling(b, &spool, "always"));
    up.stop();
    let (flipped, intact) = (spool_one(&p), spool_one(&p));
    drop(p);
    let file = &entries(&spool)[0];
    let mut bytes = fs::read(file).unwrap();
    assert!(contains(&bytes, flipped.as_bytes()));
    let at = bytes
        .windows(4)
        .position(|w| w == b"Jane")
        .expect("the body is in a plain entry");
    bytes[at + 1] ^= 0x03; // "Jane" -> "Jbne"
    fs::write(file, &bytes).unwrap();
    up.restart();
    let p = spooling(Proxy::builder().upstream(&up), &spool, "always").start();
    wait_accepted(&up, std::slice::from_ref(&intact), REDELIVERED);
    // The take that handed out the intact entry read the damaged one too:
    // sent with it, or set aside as unreadable.
    let damaged_sent = || up.requests().iter().any(|r| contains(&r.body, b"Jbne"));
    wait_for("the damaged entry to be sent or set aside", W, || {
        damaged_sent() || p.metric_or_zero(&unreadable_series()) == 1.0
    });
    assert!(!damaged_sent(), "the damaged entry was delivered");
    assert_eq!(listed(&p)["unreadable"], 1);
    assert!(!accepted_counts(&up).contains_key(&flipped));
    assert!(file.exists());
    assert!(p.logs().contains("checksum"), "{}", p.logs());
}

/// The app answered 2xx but the entries' files cannot be removed (EROFS on
/// unlink): tombstones record the deliveries, and a restart with the memory
/// replay store (which forgot them) removes the files unsent.
#[test]
fn a_delivered_entry_whose_file_cannot_be_removed_is_not_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let faults = Faults::new();
    faults.set(&[&format!("unlink {EROFS} /live/")]);
    let (up, p) = rig_with(|b| faults.load(spooling(b, &spool, "always")));
    let ids: Vec<String> = (0..5).map(|_| spool_one(&p)).collect();
    wait_accepted(&up, &ids, REDELIVERED);
    wait_for("five failed removals", W, || {
        faults.fired().matches("unlink").count() >= 5
    });
    let done = route_dir(&spool).join("done");
    let tombstoned = wait_until(W, || names(&done).len() == 5);
    assert_eq!(
        entries(&spool).len(),
        5,
        "the files could be removed after all"
    );
    drop(p);

    let p = spooling(Proxy::builder().upstream(&up), &spool, "always").start();
    // The worker runs: a new delivery reaches the app, the old ones do not.
    let control = spool_one(&p);
    wait_accepted(&up, std::slice::from_ref(&control), REDELIVERED);
    let counts = accepted_counts(&up);
    assert!(
        ids.iter().all(|id| counts[id] == 1),
        "delivered again: {counts:?}"
    );
    assert!(tombstoned, "no five tombstones: {:?}", names(&done));
    // Removed at the start, tombstones with them; the control entry leaves
    // once its 2xx is recorded (the app may have it before that).
    wait_for("the control entry removed", W, || listed(&p)["depth"] == 0);
    assert!(entries(&spool).is_empty(), "{:?}", entries(&spool));
    assert!(names(&done).is_empty(), "{:?}", names(&done));
}

/// A tmpfs of the test's own, remounted read-only and back; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        st.status.success().then(|| Tmpfs(at.to_owned()))
    }

    fn remount(&self, mode: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "remount {mode}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every write refused (the spool's disk read-only) when the app's 2xx comes:
/// neither the file nor a tombstone can be written, so only the process
/// remembers the delivery. It never sends it again while it runs, removes
/// the file once the disk is writable again, and says in its log that a
/// restart before then would deliver it again: the documented window,
/// shown here too.
#[test]
fn with_every_write_refused_a_delivery_is_remembered_and_the_window_is_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk")) else {
        eprintln!("skipped: mounting a tmpfs is refused here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let spool = disk.0.join("spool");
    let (up, p) = rig_with(|b| spooling(b, &spool, "always"));
    let window = "would deliver it again";

    // In the app's hands when the disk turns read-only.
    up.hold();
    let first = spool_one(&p);
    up.wait_for_requests(1, W);
    disk.remount("ro");
    up.release();
    wait_accepted(&up, std::slice::from_ref(&first), W);
    wait_for("the log to name the window", W, || {
        p.logs().matches(window).count() == 1
    });
    assert_eq!(entries(&spool).len(), 1, "removed from a read-only disk?");
    // A negative: the window is the check (the worker looks 4 times a second).
    assert!(
        !wait_until(Duration::from_secs(2), || up.count() > 1),
        "sent again by the process that remembers it"
    );
    disk.remount("rw");
    wait_for(
        "the file to be removed once the disk is writable",
        W,
        || entries(&spool).is_empty(),
    );

    // The window: a restart while nothing can be written.
    up.hold();
    let second = spool_one(&p);
    up.wait_for_requests(2, W);
    disk.remount("ro");
    up.release();
    wait_accepted(&up, std::slice::from_ref(&second), W);
    wait_for("the log to name the window again", W, || {
        p.logs().matches(window).count() == 2
    });
    drop(p); // SIGKILL, the disk still read-only
    disk.remount("rw");
    let _p = spooling(Proxy::builder().upstream(&up), &spool, "always").start();
    wait_for("the second event delivered again", REDELIVERED, || {
        accepted_counts(&up).get(&second) == Some(&2)
    });
    assert_eq!(accepted_counts(&up)[&first], 1);
}

/// `fsync` of `live/` fails after an entry's rename: the delivery is
/// answered without 202 (the app's 503, so Persona retries), and what was
/// written is taken back before the answer: removed, or, when even the
/// removal fails, tombstoned. After a restart the spool holds nothing to
/// deliver; Persona's retry is the one copy the app gets.
#[test]
fn a_failed_flush_after_a_write_answers_without_202_and_leaves_nothing_to_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let faults = Faults::new();
    let (up, p) = rig_with(|b| faults.load(spooling(b, &spool, "on_failure")));
    up.set_status(503);
    let flush = format!("fsync {EIO} /live$");
    faults.set(&[&flush]);
    let (a, b) = (event_id(), event_id());
    let r = p.deliver(&event_body(&a, "inquiry.approved"));
    assert_eq!(r.status, 503, "the app's answer, not 202: {}", r.text());
    assert!(faults.fired().contains("fsync"), "the shim did not fire");
    assert!(
        entries(&spool).is_empty(),
        "left behind: {:?}",
        entries(&spool)
    );
    // The removal fails too: a tombstone takes its place.
    faults.set(&[&flush, &format!("unlink {EIO} /live/")]);
    let r = p.deliver(&event_body(&b, "inquiry.approved"));
    assert_eq!(r.status, 503, "the app's answer, not 202: {}", r.text());
    let left = entries(&spool);
    assert_eq!(left.len(), 1, "{left:?}");
    let stem = left[0].file_stem().unwrap().to_str().unwrap().to_string();
    assert!(names(&route_dir(&spool).join("done")).contains(&stem));
    p.wait_for_metric(&fallbacks("unavailable"), 2.0);
    drop(p);

    up.set_status(200);
    let p = spooling(Proxy::builder().upstream(&up), &spool, "on_failure").start();
    assert!(entries(&spool).is_empty(), "{:?}", entries(&spool));
    assert_eq!(listed(&p)["depth"], 0);
    // Persona's retries: the only copies.
    for id in [&a, &b] {
        assert_eq!(p.deliver(&event_body(id, "inquiry.approved")).status, 200);
    }
    let counts = accepted_counts(&up);
    assert_eq!((counts[&a], counts[&b]), (1, 1), "{counts:?}");
}

/// The Redis spool after a restart with the wrong key: the entries stay in
/// the stream, are counted as unreadable (not as depth) and logged once by
/// id, though they come back to the replica after every `inflight_ttl`
/// (never in a hot loop); the right key delivers them once.
#[test]
fn on_redis_entries_that_do_not_decode_are_counted_kept_and_logged_once() {
    let redis = RedisServer::start();
    let (key, wrong) = ("6b".repeat(32), "b6".repeat(32));
    let on = |b: ProxyBuilder, k: &str| {
        sealed(
            b.redis(&redis.url())
                .set("replay.inflight_ttl", "2s")
                .set("spool.max_backoff", "1s")
                .route(|r| r.set("spool", "always")),
            k,
        )
    };
    let (mut up, p) = rig_with(|b| on(b, &key));
    up.stop();
    let ids: Vec<String> = (0..3).map(|_| spool_one(&p)).collect();
    drop(p);
    up.restart();
    let p = on(Proxy::builder().upstream(&up), &wrong).start();
    p.wait_for_metric(&unreadable_series(), 3.0);
    let route = listed(&p);
    assert_eq!(
        (route["unreadable"].as_u64(), route["depth"].as_u64()),
        (Some(3), Some(0)),
        "{route}"
    );
    let stream = "persona-guard:spool:/webhooks/persona";
    assert_eq!(
        redis.command(&["XLEN", stream]).as_deref(),
        Some(&b":3\r\n"[..])
    );
    // They come back to this replica after every `inflight_ttl` (XAUTOCLAIM;
    // the times each was handed out are in XPENDING): wait for two comebacks.
    let handed_out = || -> Vec<i64> {
        let reply = redis
            .command(&["XPENDING", stream, "persona-guard", "-", "+", "10"])
            .unwrap_or_default();
        let ints: Vec<i64> = String::from_utf8_lossy(&reply)
            .split("\r\n")
            .filter_map(|l| l.strip_prefix(':')?.parse().ok())
            .collect();
        // Per entry: idle milliseconds, then times delivered.
        ints.chunks(2).filter_map(|c| c.get(1).copied()).collect()
    };
    wait_for(
        "every entry handed out twice more",
        Duration::from_secs(20),
        || {
            let n = handed_out();
            n.len() == 3 && n.iter().all(|&d| d >= 4)
        },
    );
    assert_eq!(
        p.logs().matches("does not decode").count(),
        3,
        "{}",
        p.logs()
    );
    assert_eq!(up.count(), 0);
    drop(p);
    let _p = on(Proxy::builder().upstream(&up), &key).start();
    wait_accepted(&up, &ids, REDELIVERED);
    let counts = accepted_counts(&up);
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
}
