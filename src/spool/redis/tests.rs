//! Against a real `redis-server` (started here on a free loopback port, as in
//! the replay store's tests).
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
fn a_stopped_redis_is_unavailable_within_the_timeout() {
    let mut server = Server::start();
    let s = RedisSpool::open(
        &server.url(),
        None,
        "t:",
        Duration::from_millis(300),
        1 << 20,
        None,
    )
    .unwrap();
    let rt = rt();
    rt.block_on(async { s.put(&record("/r", 1)).await.unwrap() });
    server.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let r = rt.block_on(s.put(&record("/r", 2)));
        assert!(matches!(r, Err(SpoolError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert!(matches!(
            rt.block_on(s.take("/r", 1, LONG)),
            Err(SpoolError::Unavailable(_))
        ));
        assert!(started.elapsed() < Duration::from_millis(800));
    }
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
        assert_eq!(ids(&taken), [good]);
        // Read (so not handed out as new again) but neither acked nor deleted.
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 2);
        assert!(
            server
                .command(&["XPENDING", "t:spool:/r", GROUP])
                .starts_with("*4\r\n:2\r\n")
        );
        assert_eq!(s.stats("/r").await.unwrap().depth, 2);
    });
}

#[test]
fn errors_never_show_the_password() {
    let mut server = Server::start_with(Some("s3cretPW"));
    let port = server.port;
    let with_pw = format!("redis://:s3cretPW@127.0.0.1:{port}/0");
    let rt = rt();
    let secret_free = |e: SpoolError| {
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cretPW"), "{text}");
        assert!(!text.contains("wr0ngPW"), "{text}");
        assert!(!text.contains("redis://"), "{text}");
    };

    // The right password, in the URL and in the settings: it works.
    let ok = RedisSpool::open(&with_pw, None, "t:", Duration::from_secs(1), 1 << 20, None).unwrap();
    rt.block_on(ok.put(&record("/r", 1))).unwrap();
    let settings = RedisSettings {
        url: server.url(),
        password: Some(Secret::new(b"s3cretPW".to_vec())),
        key_prefix: "t:".into(),
        timeout: Duration::from_secs(1),
    };
    let by_settings = RedisSpool::new(&settings, 1 << 20, None).unwrap();
    assert_eq!(rt.block_on(by_settings.stats("/r")).unwrap().depth, 1);

    // A wrong one, either way: Unavailable, and the text shows neither.
    let wrong_url = format!("redis://:wr0ngPW@127.0.0.1:{port}/0");
    let bad = RedisSpool::open(
        &wrong_url,
        None,
        "t:",
        Duration::from_secs(1),
        1 << 20,
        None,
    )
    .unwrap();
    let e = rt.block_on(bad.put(&record("/r", 2))).unwrap_err();
    assert!(matches!(e, SpoolError::Unavailable(_)), "{e:?}");
    secret_free(e);
    let bad = RedisSpool::open(
        &server.url(),
        Some(b"wr0ngPW"),
        "t:",
        Duration::from_secs(1),
        1 << 20,
        None,
    )
    .unwrap();
    secret_free(rt.block_on(bad.take("/r", 1, LONG)).unwrap_err());

    eprintln!(
        "wrong password: {}",
        rt.block_on(bad.take("/r", 1, LONG)).unwrap_err()
    );
    // Redis gone, with the password in the URL: still not in the error.
    server.stop();
    secret_free(rt.block_on(ok.put(&record("/r", 3))).unwrap_err());
}

#[test]
fn a_closed_spool_fails_its_calls_at_once() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        s.put(&record("/r", 1)).await.unwrap();
        s.close().await;
        let started = Instant::now();
        assert!(matches!(
            s.put(&record("/r", 2)).await,
            Err(SpoolError::Unavailable(_))
        ));
        assert!(s.stats("/r").await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
        s.close().await;
    });
    assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 1, "entries stay");
}

#[test]
fn a_put_retried_after_its_first_attempt_ran_stores_once() {
    // The second attempt of a put whose reply was lost: the same nonce mark.
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    rt().block_on(async {
        let r = record("/r", 1);
        let attempt = || {
            s.eval::<(i64, String)>(
                &scripts::PUT,
                vec![s.live("/r"), s.bytes_key(), b"t:spool-put:feed".to_vec()],
                vec![
                    encode(&r, None),
                    r.size().to_string().into_bytes(),
                    b"1048576".to_vec(),
                    b"60000".to_vec(),
                ],
            )
        };
        let first = attempt().await.unwrap();
        assert_eq!(attempt().await.unwrap(), first);
        assert_eq!(server.int(&["XLEN", "t:spool:/r"]), 1);
        assert_eq!(server.int(&["GET", "t:spool-bytes"]), r.size() as i64);
    });
}

#[test]
fn every_call_survives_a_dropped_connection() {
    let server = Server::start();
    let s = spool(&server, 1 << 20);
    let kill = || {
        let killed = server.command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        assert_eq!(killed.trim(), ":1", "one client connection was cut");
        std::thread::sleep(Duration::from_millis(100));
    };
    rt().block_on(async {
        let id = s.put(&record("/r", 1)).await.unwrap();
        kill();
        s.put(&record("/r", 2)).await.unwrap();
        kill();
        let taken = s.take("/r", 10, LONG).await.unwrap();
        assert_eq!(taken.len(), 2);
        kill();
        s.keep("/r", &ids(&taken)).await.unwrap();
        kill();
        s.remove("/r", &id).await.unwrap();
        kill();
        assert_eq!(s.stats("/r").await.unwrap().depth, 1);
    });
}

#[test]
fn close_leaves_the_group_unless_it_still_holds_entries() {
    let server = Server::start();
    let a = spool(&server, 1 << 20);
    let b = spool(&server, 1 << 20);
    let consumers = || server.command(&["XINFO", "CONSUMERS", "t:spool:/r", GROUP]);
    rt().block_on(async {
        let id = a.put(&record("/r", 1)).await.unwrap();
        a.put(&record("/r", 2)).await.unwrap();
        let taken = a.take("/r", 1, LONG).await.unwrap();
        a.remove("/r", &taken[0].id).await.unwrap();
        assert_eq!(taken[0].id, id);
        b.take("/r", 10, LONG).await.unwrap();
        assert!(consumers().contains(a.consumer()));
        a.close().await;
        b.close().await;
    });
    let left = consumers();
    assert!(!left.contains(a.consumer()), "{left}");
    assert!(
        left.contains(b.consumer()),
        "b still holds an entry: {left}"
    );
}
