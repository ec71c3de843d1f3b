//! The Redis spool when the connection fails, is retried or is closed (see
//! the parent module for the test server).

use super::*;

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

fn settings(url: String, password: &str, prefix: &str) -> RedisSettings {
    RedisSettings {
        url,
        password: Some(Secret::new(password.as_bytes().to_vec())),
        key_prefix: prefix.into(),
        timeout: Duration::from_secs(1),
    }
}

#[test]
fn same_data_is_the_same_server_database_and_prefix() {
    let base = settings("redis://127.0.0.1:6379/0".into(), "a", "pg:");
    let same = [
        settings("redis://127.0.0.1:6379/0".into(), "b", "pg:"),
        settings("redis://:b@127.0.0.1:6379/0".into(), "a", "pg:"),
        settings("rediss://127.0.0.1:6379/0".into(), "a", "pg:"),
        RedisSettings {
            timeout: Duration::from_secs(9),
            ..base.clone()
        },
    ];
    for new in &same {
        assert!(same_data(&base, new), "{:?}", new.timeout);
    }
    let elsewhere = [
        settings("redis://127.0.0.1:6380/0".into(), "a", "pg:"),
        settings("redis://127.0.0.2:6379/0".into(), "a", "pg:"),
        settings("redis://127.0.0.1:6379/1".into(), "a", "pg:"),
        settings("redis://127.0.0.1:6379/0".into(), "a", "other:"),
        settings("not a url".into(), "a", "pg:"),
    ];
    for new in &elsewhere {
        assert!(!same_data(&base, new), "{}", new.key_prefix);
    }
}

/// A rotated password: Redis drops the spool's connections and asks for the
/// new one. Without `follow` every call fails; after it, the same spool (its
/// consumer, its entries) goes on with a new client.
#[test]
fn follow_takes_a_rotated_password_and_keeps_the_entries() {
    let mut server = Server::start_with(Some("first-pw"));
    let old = settings(server.url(), "first-pw", "t:");
    let s = RedisSpool::new(&old, 1 << 20, None).unwrap();
    let rt = rt();
    rt.block_on(s.put(&record("/r", 1))).unwrap();

    assert!(
        server
            .command(&["CONFIG", "SET", "requirepass", "second-pw"])
            .starts_with("+OK")
    );
    server.password = Some("second-pw");
    server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let refused = rt.block_on(s.put(&record("/r", 2)));
    assert!(
        matches!(refused, Err(SpoolError::Unavailable(_))),
        "{refused:?}"
    );

    let elsewhere = settings("redis://127.0.0.1:1/0".into(), "second-pw", "t:");
    assert!(
        !s.follow(&elsewhere).unwrap(),
        "another server is not followed"
    );
    // Nor after a reload that moved the replay store there: the spool's
    // entries are still where it opened.
    let elsewhere_rotated = settings("redis://127.0.0.1:1/0".into(), "third-pw", "t:");
    assert!(!s.follow(&elsewhere_rotated).unwrap());
    let new = settings(server.url(), "second-pw", "t:");
    assert!(s.follow(&new).unwrap());
    rt.block_on(s.put(&record("/r", 3))).unwrap();
    let taken = rt.block_on(s.take("/r", 10, LONG)).unwrap();
    let ids: Vec<&str> = taken.iter().map(|e| e.record.replay_id.as_str()).collect();
    assert_eq!(
        ids,
        ["evt_1", "evt_3"],
        "the entry from before the rotation and the new one"
    );
}
