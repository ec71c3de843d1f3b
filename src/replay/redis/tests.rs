//! Against a real `redis-server` (started here on a free loopback port);
//! `failover`: a failover behind one address.

mod failover;

use super::*;
use crate::replay;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Server(Child, u16);

impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server(child, port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.1)
    }

    /// One raw RESP command on a connection of its own; the reply as text.
    fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// How many times Redis ran `cmd` (scripts' own calls included).
    fn calls(&self, cmd: &str) -> u64 {
        let stats = self.command(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn claimed(c: Claim) -> u64 {
    match c {
        Claim::Claimed(t) => t,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[test]
fn the_state_machine_holds_across_clients() {
    let server = Server::start();
    let url = server.url();
    let a = RedisStore::open(&url, None, "t:", Duration::from_secs(1)).unwrap();
    let b = RedisStore::open(&url, None, "t:", Duration::from_secs(1)).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(60);
        let route = b"/r".as_slice();
        a.ping().await.unwrap();

        // One claim wins; the other client sees it in flight.
        let t1 = claimed(a.claim(&a.key(route, "e1"), 1, long).await.unwrap());
        match b.claim(&b.key(route, "e1"), 2, long).await.unwrap() {
            Claim::InFlight { retry_after } => assert!(retry_after <= long),
            other => panic!("{other:?}"),
        }
        // Another client's token cannot release it; the owner's can.
        b.release(&b.key(route, "e1"), 2).await.unwrap();
        assert!(matches!(
            b.claim(&b.key(route, "e1"), 3, long).await.unwrap(),
            Claim::InFlight { .. }
        ));
        a.release(&a.key(route, "e1"), t1).await.unwrap();
        let t4 = claimed(b.claim(&b.key(route, "e1"), 4, long).await.unwrap());

        // Delivered: a duplicate for everyone; a late release changes nothing.
        b.commit(&b.key(route, "e1"), long).await.unwrap();
        a.release(&a.key(route, "e1"), t4).await.unwrap();
        assert_eq!(
            a.claim(&a.key(route, "e1"), 5, long).await.unwrap(),
            Claim::Duplicate
        );

        // An in-flight mark expires by itself (a crashed instance).
        claimed(
            a.claim(&a.key(route, "e2"), 6, Duration::from_millis(150))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        claimed(b.claim(&b.key(route, "e2"), 7, long).await.unwrap());
        // ...and the crashed instance's late release does not free the new claim.
        a.release(&a.key(route, "e2"), 6).await.unwrap();
        assert!(matches!(
            a.claim(&a.key(route, "e2"), 8, long).await.unwrap(),
            Claim::InFlight { .. }
        ));

        // Routes are separate namespaces.
        claimed(a.claim(&a.key(b"/other", "e1"), 9, long).await.unwrap());
    });
}

#[test]
fn renew_extends_only_its_own_tokens_mark_and_a_lease_keeps_renewing() {
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(1)).unwrap();
    let b: Arc<dyn ReplayStore> =
        Arc::new(RedisStore::open(&server.url(), None, "t:", Duration::from_secs(1)).unwrap());
    rt().block_on(async {
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(60);
        let k = a.key(b"/r", "e1");
        let pttl = |key: &[u8]| -> i64 {
            let reply = server.command(&["PTTL", std::str::from_utf8(key).unwrap()]);
            reply.trim().trim_start_matches(':').parse().unwrap()
        };
        claimed(a.claim(&k, 11, short).await.unwrap());
        // Another token extends nothing; the owner's does.
        assert!(!a.renew(&k, 12, long).await.unwrap());
        assert!(pttl(&k) <= 300, "{}", pttl(&k));
        assert!(a.renew(&k, 11, long).await.unwrap());
        assert!(pttl(&k) > 50_000, "{}", pttl(&k));
        // A delivered mark is never touched by its old claim's renewal.
        a.commit(&k, Duration::from_secs(3600)).await.unwrap();
        assert!(!a.renew(&k, 11, short).await.unwrap());
        assert!(pttl(&k) > 3_000_000, "{}", pttl(&k));
        // Nor is an expired one brought back.
        let gone = a.key(b"/r", "e2");
        claimed(a.claim(&gone, 13, Duration::from_millis(50)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!a.renew(&gone, 13, long).await.unwrap());
        assert_eq!(pttl(&gone), -2);

        // A lease renews its mark for several lifetimes, until it is settled.
        let Claim::Claimed(lease) = replay::claim(&b, b"/r", "e3", short).await.unwrap() else {
            panic!("expected a claim")
        };
        tokio::time::sleep(short * 4).await;
        assert!(matches!(
            replay::claim(&b, b"/r", "e3", short).await.unwrap(),
            Claim::InFlight { retry_after } if retry_after <= short
        ));
        lease.release().await;
        assert!(matches!(
            replay::claim(&b, b"/r", "e3", short).await.unwrap(),
            Claim::Claimed(_)
        ));
    });
}

#[test]
fn take_over_swaps_only_the_old_tokens_mark_in_one_step() {
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(1)).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(60);
        let k = a.key(b"/r", "e1");
        claimed(a.claim(&k, 21, long).await.unwrap());
        // The old token's mark passes to the new token, at once.
        assert_eq!(
            a.take_over(&k, 21, 22, long).await.unwrap(),
            Claim::Claimed(22)
        );
        assert!(!a.renew(&k, 21, long).await.unwrap());
        assert!(a.renew(&k, 22, long).await.unwrap());
        // Retried with the same new token (a lost reply): still its own.
        assert_eq!(
            a.take_over(&k, 21, 22, long).await.unwrap(),
            Claim::Claimed(22)
        );
        // Another delivery's mark is not taken over.
        assert!(matches!(
            a.take_over(&k, 21, 23, long).await.unwrap(),
            Claim::InFlight { .. }
        ));
        // An absent mark is claimed; a delivered id is a duplicate.
        let absent = a.key(b"/r", "e2");
        assert_eq!(
            a.take_over(&absent, 1, 24, long).await.unwrap(),
            Claim::Claimed(24)
        );
        a.commit(&k, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(
            a.take_over(&k, 22, 25, long).await.unwrap(),
            Claim::Duplicate
        );
    });
}

#[test]
fn a_claim_retried_with_its_own_token_is_still_claimed() {
    // What a retry sees when the first attempt ran but its reply was lost.
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(1)).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(60);
        let route = b"/r".as_slice();
        assert_eq!(
            claimed(a.claim(&a.key(route, "e"), 7, long).await.unwrap()),
            7
        );
        // The same token again: claimed (not "in flight"), lease renewed...
        assert_eq!(
            claimed(a.claim(&a.key(route, "e"), 7, long).await.unwrap()),
            7
        );
        // ...while any other token is still refused,
        assert!(matches!(
            a.claim(&a.key(route, "e"), 8, long).await.unwrap(),
            Claim::InFlight { .. }
        ));
        // and a delivered mark stays a duplicate even for that token.
        a.commit(&a.key(route, "e"), long).await.unwrap();
        assert_eq!(
            a.claim(&a.key(route, "e"), 7, long).await.unwrap(),
            Claim::Duplicate
        );
    });
}

#[test]
fn every_call_survives_a_dropped_connection() {
    // Redis closes the client's connection (as its `timeout`, a NAT idle
    // cut or a failover would) before each call: each one is retried once
    // on a new connection instead of failing.
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
    let kill = || {
        let killed = server.command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        assert_eq!(killed.trim(), ":1", "one client connection was cut");
        // Let the client see the connection closed, as after an idle gap.
        std::thread::sleep(Duration::from_millis(100));
    };
    rt().block_on(async {
        let long = Duration::from_secs(60);
        let route = b"/r".as_slice();
        a.ping().await.unwrap();
        kill();
        a.ping().await.unwrap();
        kill();
        let t = claimed(a.claim(&a.key(route, "e1"), 1, long).await.unwrap());
        kill();
        a.release(&a.key(route, "e1"), t).await.unwrap();
        claimed(a.claim(&a.key(route, "e1"), 2, long).await.unwrap());
        kill();
        a.commit(&a.key(route, "e1"), long).await.unwrap();
        kill();
        assert_eq!(
            a.claim(&a.key(route, "e1"), 3, long).await.unwrap(),
            Claim::Duplicate
        );
    });
}

#[test]
fn a_claim_that_timed_out_is_released_when_its_late_reply_arrives() {
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_millis(200)).unwrap();
    let b = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(5)).unwrap();
    let long = Duration::from_secs(60);
    let route = b"/r".as_slice();
    let rt = rt();
    // Warm up: connections made and both scripts loaded.
    rt.block_on(async {
        let t = claimed(a.claim(&a.key(route, "warm"), 1, long).await.unwrap());
        a.release(&a.key(route, "warm"), t).await.unwrap();
        b.ping().await.unwrap();
    });
    assert!(server.command(&["CONFIG", "RESETSTAT"]).starts_with("+OK"));
    // Redis answers nothing for 800 ms; the claim times out client-side
    // but runs in Redis once the pause ends.
    assert!(
        server
            .command(&["CLIENT", "PAUSE", "800", "ALL"])
            .starts_with("+OK")
    );
    let started = std::time::Instant::now();
    let r = rt.block_on(a.claim(&a.key(route, "late"), 2, long));
    assert!(
        matches!(r, Err(RedisStoreError::Timeout(_))),
        "{r:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(700));
    rt.block_on(async {
        // Once the pause is over the late claim ran, and its late release
        // removed the mark: another replica's claim is not "in flight".
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if server.calls("del") >= 1 || std::time::Instant::now() > deadline {
                break;
            }
        }
        claimed(b.claim(&b.key(route, "late"), 3, long).await.unwrap());
    });
    // The claim did run (its SET made the mark) and the release deleted it.
    assert_eq!(server.calls("del"), 1, "the late mark was deleted");
    assert!(server.calls("set") >= 2, "both claims ran");
}

#[test]
fn a_claim_answered_in_time_is_not_released() {
    // The twin of the test above: with time to answer, the mark stays.
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
    let b = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(60);
        a.ping().await.unwrap();
        assert!(
            server
                .command(&["CLIENT", "PAUSE", "300", "ALL"])
                .starts_with("+OK")
        );
        claimed(a.claim(&a.key(b"/r", "late"), 2, long).await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            b.claim(&b.key(b"/r", "late"), 3, long).await.unwrap(),
            Claim::InFlight { .. }
        ));
    });
    assert_eq!(server.calls("del"), 0);
}

#[test]
fn an_unreachable_server_is_an_error_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let s = RedisStore::open(&url, None, "t:", Duration::from_millis(200)).unwrap();
    let rt = rt();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = rt.block_on(s.claim(&s.key(b"/r", "e"), 1, Duration::from_secs(1)));
        assert!(r.is_err());
        // Two attempts (the retry) within one bound.
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        assert!(!r.unwrap_err().to_string().contains(&port.to_string()));
        let started = std::time::Instant::now();
        assert!(rt.block_on(s.ping()).is_err());
        assert!(started.elapsed() < Duration::from_millis(600));
    }
}

#[test]
fn a_lease_over_redis_settles_and_releases_on_drop() {
    let server = Server::start();
    let store: Arc<dyn ReplayStore> =
        Arc::new(RedisStore::open(&server.url(), None, "t:", Duration::from_secs(2)).unwrap());
    rt().block_on(async {
        let long = Duration::from_secs(60);
        let lease = |id: &'static str| {
            let store = store.clone();
            async move {
                match crate::replay::claim(&store, b"/r", id, long).await.unwrap() {
                    Claim::Claimed(lease) => lease,
                    other => panic!("expected a claim, got {other:?}"),
                }
            }
        };
        let held = lease("e1").await;
        assert_eq!(held.key(), &StoreKey::Name(b"t:/r:e1".as_slice().into()));
        // Dropped unsettled: released by a task on this runtime.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server.command(&["EXISTS", "t:/r:e1"]).trim() != ":0" {
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lease("e1").await.commit(long).await;
        assert!(matches!(
            crate::replay::claim(&store, b"/r", "e1", long)
                .await
                .unwrap(),
            Claim::Duplicate
        ));
    });
}

#[test]
fn a_closed_store_drops_its_connection_and_fails_its_calls_at_once() {
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
    let rt = rt();
    rt.block_on(async {
        a.ping().await.unwrap();
        ReplayStore::close(&a).await;
        let started = std::time::Instant::now();
        assert!(a.ping().await.is_err());
        assert!(
            a.claim(&a.key(b"/r", "e"), 1, Duration::from_secs(60))
                .await
                .is_err()
        );
        assert!(
            a.commit(&a.key(b"/r", "e"), Duration::from_secs(60))
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Closing again is harmless.
        ReplayStore::close(&a).await;
    });
    // Its connection is gone: only the test's own probe is connected.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let clients = server.command(&["CLIENT", "LIST"]);
        if clients.matches(" addr=").count() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{clients}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn peek_reads_every_key_in_one_call_and_changes_nothing() {
    let server = Server::start();
    let a = RedisStore::open(&server.url(), None, "t:", Duration::from_secs(1)).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(60);
        let route = b"/r".as_slice();
        claimed(a.claim(&a.key(route, "in"), 1, long).await.unwrap());
        claimed(a.claim(&a.key(route, "done"), 2, long).await.unwrap());
        a.commit(&a.key(route, "done"), long).await.unwrap();
        let keys = ["in", "done", "none"].map(|e| a.key(route, e)).to_vec();
        let before = server.calls("mget");
        assert_eq!(
            a.peek(keys).await.unwrap(),
            [Mark::InFlight, Mark::Delivered, Mark::Absent]
        );
        assert_eq!(server.calls("mget"), before + 1);
        claimed(a.claim(&a.key(route, "none"), 3, long).await.unwrap());
        assert!(a.peek(Vec::new()).await.unwrap().is_empty());
    });
}
