//! Against a real `redis-server` (started here on a free loopback port, as in
//! the replay store's tests).
//!
//! This file: the spool's calls and what they leave in Redis; `connection`:
//! a stopped or closed Redis, passwords, retries and leaving the group.

mod connection;

use super::*;
use crate::config::Secret;
use crate::spool::codec::encode;
use crate::spool::{EntryId, Record, RouteStats, SpoolStore};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

struct Server {
    child: Child,
    port: u16,
    password: Option<&'static str>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(None)
    }

    fn start_with(password: Option<&'static str>) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            port,
            password,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One raw RESP command on a connection of its own (authenticated first
    /// if the server wants it); the reply as text.
    fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let send = |s: &mut TcpStream, args: &[&str]| {
            let mut req = format!("*{}\r\n", args.len());
            for a in args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            s.write_all(req.as_bytes()).unwrap();
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        if let Some(pw) = self.password {
            assert!(send(&mut s, &["AUTH", pw]).starts_with("+OK"));
        }
        send(&mut s, args)
    }

    /// An integer reply, or a bulk string holding one (`GET`); nil is 0.
    fn int(&self, args: &[&str]) -> i64 {
        let reply = self.command(args);
        let text = match reply.strip_prefix('$') {
            Some("-1\r\n") => "0",
            Some(bulk) => bulk.lines().nth(1).unwrap_or(""),
            None => reply.trim().trim_start_matches(':'),
        };
        text.parse()
            .unwrap_or_else(|_| panic!("not an integer: {reply:?}"))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn spool(server: &Server, max_bytes: u64) -> RedisSpool {
    RedisSpool::open(
        &server.url(),
        None,
        "t:",
        Duration::from_secs(2),
        max_bytes,
        None,
    )
    .unwrap()
}

/// A record whose head and body hold every byte value (CR, LF, NUL, 0xff...).
fn record(route: &str, n: u8) -> Record {
    let mut head = b"POST /webhooks/persona HTTP/1.1\r\nX-Bin: ".to_vec();
    head.extend([0u8, 0xff, b'\r', n]);
    head.extend_from_slice(b"\r\nContent-Length: 256\r\n\r\n");
    Record {
        route: route.to_string(),
        replay_id: format!("evt_{n}"),
        event_id: Some(format!("evt_{n}")),
        event_type: Some("inquiry.completed".into()),
        token: 0xdead_beef_0000 + n as u64,
        spooled_at_ms: 1_000 + n as u64,
        live_since_ms: 1_000 + n as u64,
        head,
        body: (0..=255u8).map(|b| b ^ n).collect(),
    }
}

const LONG: Duration = Duration::from_secs(600);

fn ids(entries: &[Entry]) -> Vec<EntryId> {
    entries.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn put_take_remove_round_trip_keeps_every_byte() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        let (r1, r2) = (record("/r", 1), record("/r", 2));
        let id1 = s.put(&r1).await.unwrap();
        let id2 = s.put(&r2).await.unwrap();
        assert!(parse_id(&id1) < parse_id(&id2));
        let bytes = r1.size() + r2.size();
        assert_eq!(server.int(&["GET", "t:spool-bytes"]), bytes as i64);

        let taken = s.take("/r", 10, LONG).await.unwrap();
        assert_eq!(ids(&taken), vec![id1.clone(), id2.clone()]);
        assert_eq!(taken[0].record, r1, "byte-identical head and body");
        assert_eq!(taken[1].record, r2);
        // Handed out: not again (neither new nor idle long enough).
        assert!(s.take("/r", 10, LONG).await.unwrap().is_empty());

        s.remove("/r", &id1).await.unwrap();
        // Removing again, or an id that never was, is not an error.
        s.remove("/r", &id1).await.unwrap();
        s.remove("/r", &"1-1".to_string()).await.unwrap();
        s.remove("/r", &"not-an-id".to_string()).await.unwrap();
        assert_eq!(server.int(&["GET", "t:spool-bytes"]), r2.size() as i64);
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 1);
        // Acknowledged too: only id2 is pending.
        assert!(
            server
                .command(&["XPENDING", "t:spool:/r", GROUP])
                .starts_with("*4\r\n:1\r\n")
        );
        s.remove("/r", &id2).await.unwrap();
        assert_eq!(server.int(&["GET", "t:spool-bytes"]), 0);
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 0);
        assert!(s.take("/r", 10, Duration::ZERO).await.unwrap().is_empty());
    });
}

#[test]
fn take_hands_out_at_most_max_oldest_first() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        let mut all = Vec::new();
        for n in 0..5 {
            all.push(s.put(&record("/r", n)).await.unwrap());
        }
        let first = s.take("/r", 2, LONG).await.unwrap();
        assert_eq!(ids(&first), all[..2]);
        let rest = s.take("/r", 10, LONG).await.unwrap();
        assert_eq!(ids(&rest), all[2..]);
        // Nothing read and dropped: exactly five pending.
        assert!(
            server
                .command(&["XPENDING", "t:spool:/r", GROUP])
                .starts_with("*4\r\n:5\r\n")
        );
        assert!(s.take("/r", 0, Duration::ZERO).await.unwrap().is_empty());
    });
}

#[test]
fn another_consumer_takes_over_an_entry_idle_past_min_idle() {
    let server = Server::start();
    let a = spool(&server, 1 << 20);
    let b = spool(&server, 1 << 20);
    assert_ne!(a.consumer(), b.consumer());
    rt().block_on(async {
        let min_idle = Duration::from_millis(300);
        let id = a.put(&record("/r", 1)).await.unwrap();
        assert_eq!(
            ids(&a.take("/r", 10, min_idle).await.unwrap()),
            [id.as_str()]
        );
        // A holds it: B gets nothing before min_idle...
        assert!(b.take("/r", 10, min_idle).await.unwrap().is_empty());
        // ...and takes it over once A was silent for longer.
        tokio::time::sleep(min_idle + Duration::from_millis(100)).await;
        let taken = b.take("/r", 10, min_idle).await.unwrap();
        assert_eq!(ids(&taken), [id.as_str()]);
        assert_eq!(taken[0].record, record("/r", 1));
        // Now B's: A does not get it back at once.
        assert!(a.take("/r", 10, min_idle).await.unwrap().is_empty());
        b.remove("/r", &id).await.unwrap();
        tokio::time::sleep(min_idle + Duration::from_millis(100)).await;
        assert!(a.take("/r", 10, min_idle).await.unwrap().is_empty());
    });
}

#[test]
fn keep_prevents_a_takeover() {
    let server = Server::start();
    let a = spool(&server, 1 << 20);
    let b = spool(&server, 1 << 20);
    rt().block_on(async {
        let min_idle = Duration::from_millis(800);
        let id = a.put(&record("/r", 1)).await.unwrap();
        let held = ids(&a.take("/r", 10, min_idle).await.unwrap());
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            a.keep("/r", &held).await.unwrap();
            assert!(b.take("/r", 10, min_idle).await.unwrap().is_empty());
        }
        // Over a second held in all, never idle for 800 ms: still A's.
        let pending = server.command(&["XPENDING", "t:spool:/r", GROUP, "-", "+", "10"]);
        assert!(pending.contains(a.consumer()), "{pending}");
        // Keeping nothing, a foreign id or a gone id is harmless.
        a.keep("/r", &[]).await.unwrap();
        a.keep("/r", &["nonsense".to_string()]).await.unwrap();
        a.keep("/nothing-here", std::slice::from_ref(&id))
            .await
            .unwrap();
        a.remove("/r", &id).await.unwrap();
        a.keep("/r", &held).await.unwrap();
    });
}

#[test]
fn a_full_spool_refuses_and_adds_nothing() {
    let server = Server::start();
    let r = record("/r", 1);
    let s = spool(&server, r.size() + 10);
    rt().block_on(async {
        s.put(&r).await.unwrap();
        assert!(matches!(s.put(&r).await, Err(SpoolError::Full)));
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 1);
        assert_eq!(server.int(&["GET", "t:spool-bytes"]), r.size() as i64);
        // Full counts every route.
        assert!(matches!(
            s.put(&record("/other", 1)).await,
            Err(SpoolError::Full)
        ));
        assert_eq!(server.int(&["EXISTS", "t:spool:/other"]), 0);

        let tiny = spool(&server, 1);
        assert!(matches!(
            tiny.put(&record("/x", 1)).await,
            Err(SpoolError::Full)
        ));
        assert_eq!(server.int(&["EXISTS", "t:spool:/x"]), 0);
    });
}

#[test]
fn bury_dead_revive_and_delete_dead() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        let (r1, r2, r3) = (record("/r", 1), record("/r", 2), record("/r", 3));
        let id1 = s.put(&r1).await.unwrap();
        let id2 = s.put(&r2).await.unwrap();
        let id3 = s.put(&r3).await.unwrap();
        let total = (r1.size() + r2.size() + r3.size()) as i64;
        assert_eq!(s.take("/r", 10, LONG).await.unwrap().len(), 3);

        s.bury("/r", &id1).await.unwrap();
        s.bury("/r", &id2).await.unwrap();
        // Burying again (or what is not live) changes nothing.
        s.bury("/r", &id1).await.unwrap();
        s.bury("/r", &"bogus".to_string()).await.unwrap();
        let dead = s.dead("/r").await.unwrap();
        assert_eq!(
            dead.iter().map(|e| e.record.clone()).collect::<Vec<_>>(),
            [r1.clone(), r2.clone()]
        );
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 1);
        assert_eq!(
            server.int(&["GET", "t:spool-bytes"]),
            total,
            "dead still counts"
        );
        // Not pending any more, never handed out again.
        assert!(
            server
                .command(&["XPENDING", "t:spool:/r", GROUP])
                .starts_with("*4\r\n:1\r\n")
        );
        assert!(s.take("/r", 10, Duration::ZERO).await.unwrap().len() == 1);

        // Revive: live again with live_since_ms = now, handed out again.
        let live = s.revive("/r", &dead[0].id, 99_999).await.unwrap();
        assert!(parse_id(&live) > parse_id(&id3));
        let again = s.take("/r", 10, LONG).await.unwrap();
        assert_eq!(ids(&again), [live.as_str()]);
        assert_eq!(again[0].record.live_since_ms, 99_999);
        assert_eq!(again[0].record.spooled_at_ms, r1.spooled_at_ms);
        assert_eq!(again[0].record.body, r1.body);
        assert!(matches!(
            s.revive("/r", &dead[0].id, 1).await,
            Err(SpoolError::NotFound)
        ));
        assert_eq!(server.int(&["GET", "t:spool-bytes"]), total);

        // Delete a dead letter: gone, uncounted; twice is NotFound.
        s.delete_dead("/r", &dead[1].id).await.unwrap();
        assert!(matches!(
            s.delete_dead("/r", &dead[1].id).await,
            Err(SpoolError::NotFound)
        ));
        assert!(matches!(
            s.delete_dead("/r", &id3).await,
            Err(SpoolError::NotFound)
        ));
        assert!(matches!(
            s.delete_dead("/r", &"x".to_string()).await,
            Err(SpoolError::NotFound)
        ));
        assert!(s.dead("/r").await.unwrap().is_empty());
        assert_eq!(
            server.int(&["GET", "t:spool-bytes"]),
            (r1.size() + r3.size()) as i64
        );
    });
}

#[test]
fn stats_report_depth_age_dead_and_bytes() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        assert_eq!(s.stats("/r").await.unwrap(), RouteStats::default());
        let (r1, r2, r3) = (record("/r", 1), record("/r", 2), record("/r", 3));
        let id1 = s.put(&r1).await.unwrap();
        s.put(&r2).await.unwrap();
        s.put(&r3).await.unwrap();
        s.put(&record("/other", 9)).await.unwrap();
        let all = r1.size() + r2.size() + r3.size() + record("/other", 9).size();
        assert_eq!(
            s.stats("/r").await.unwrap(),
            RouteStats {
                depth: 3,
                oldest_live_ms: Some(r1.live_since_ms),
                dead: 0,
                bytes: all,
                unreadable: 0,
            }
        );
        s.take("/r", 10, LONG).await.unwrap();
        s.bury("/r", &id1).await.unwrap();
        assert_eq!(
            s.stats("/r").await.unwrap(),
            RouteStats {
                depth: 2,
                oldest_live_ms: Some(r2.live_since_ms),
                dead: 1,
                bytes: all,
                unreadable: 0,
            }
        );
    });
}

#[test]
fn routes_with_colon_and_percent_do_not_collide() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        let routes = ["/a:b", "/a%3Ab", "/a", "/a%b"];
        for (n, route) in routes.iter().enumerate() {
            s.put(&record(route, n as u8)).await.unwrap();
        }
        for (n, route) in routes.iter().enumerate() {
            let taken = s.take(route, 10, LONG).await.unwrap();
            assert_eq!(taken.len(), 1, "{route}");
            assert_eq!(taken[0].record, record(route, n as u8));
        }
        assert_eq!(server.int(&["EXISTS", "t:spool:/a%3Ab"]), 1);
        assert_eq!(server.int(&["EXISTS", "t:spool:/a%253Ab"]), 1);
        assert_eq!(server.int(&["EXISTS", "t:spool:/a%25b"]), 1);
    });
}

#[test]
fn an_entry_that_does_not_decode_is_skipped_and_left_pending() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        let good = s.put(&record("/r", 1)).await.unwrap();
        server.command(&["XADD", "t:spool:/r", "*", "r", "garbage", "n", "7"]);
        let taken = s.take("/r", 10, LONG).await.unwrap();
        assert_eq!(ids(&taken), std::slice::from_ref(&good));
        // Read (so not handed out as new again) but neither acked nor deleted.
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 2);
        assert!(
            server
                .command(&["XPENDING", "t:spool:/r", GROUP])
                .starts_with("*4\r\n:2\r\n")
        );
        // Kept and counted as unreadable, not as depth.
        let stats = s.stats("/r").await.unwrap();
        assert_eq!((stats.depth, stats.unreadable), (1, 1));
        // Not handed out again before min_idle: no hot loop.
        assert!(s.take("/r", 10, LONG).await.unwrap().is_empty());
        // Once gone (an operator's XDEL), no longer counted.
        let bad_id = server.command(&["XRANGE", "t:spool:/r", "-", "+"]);
        assert!(bad_id.contains("garbage"));
        s.remove("/r", &good).await.unwrap();
        server.command(&["DEL", "t:spool:/r"]);
        assert_eq!(s.stats("/r").await.unwrap(), RouteStats::default());
    });
}

#[test]
fn a_dead_letter_that_does_not_decode_is_counted_and_kept() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        server.command(&["XADD", "t:spool-dead:/r", "*", "r", "garbage", "n", "7"]);
        assert!(s.dead("/r").await.unwrap().is_empty());
        let stats = s.stats("/r").await.unwrap();
        assert_eq!((stats.dead, stats.unreadable), (0, 1));
        assert_eq!(server.int(&["XLEN", "t:spool-dead:/r"]), 1);
    });
}
