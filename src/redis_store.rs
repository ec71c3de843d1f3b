//! The Redis replay store: one replay memory shared by every replica.
//!
//! The same state machine as the memory store (see `replay.rs`), made atomic
//! across instances by Redis itself:
//!
//! * claim: `SET key inflight:<token> NX PX inflight_ttl` in a Lua script that,
//!   when the key exists, reports in the same round trip whether it is
//!   delivered or in flight and for how long. A key that already holds *this*
//!   claim's token answers "claimed" (see [retries](#retries));
//! * commit: `SET key delivered PX ttl`;
//! * release: a Lua compare-and-delete of *this* claim's value only, so a late
//!   release never deletes another instance's claim or a delivered mark.
//!
//! # Keys
//!
//! `<key_prefix><route path>:<event id>`, where the route path (the normalized
//! route, as bytes) has every `%` written `%25` and every `:` written `%3A`.
//! The route part therefore never contains `:`, so the first `:` after the
//! prefix ends it and everything after it is the event id (which may contain
//! `:`): distinct (route, event id) pairs always give distinct keys. Before,
//! route `/a:b` with event `c` and route `/a` with event `b:c` were both
//! `<prefix>/a:b:c`, and the second genuine event was answered `duplicate`.
//! For a route without `%` or `:` (the usual `/webhooks/persona`) the key is
//! the same as before, e.g. `persona-guard:/webhooks/persona:evt_123`, readable
//! with `redis-cli`; only keys of routes containing `%` or `:` changed.
//!
//! # Retries
//!
//! The client is `redis`'s `ConnectionManager`, which replaces its connection
//! only *after* a command failed on it. A connection that Redis closed while
//! idle (its `timeout` setting), that a NAT or load balancer cut, or that a
//! failover or restart broke, would make the next call fail although Redis is
//! healthy. So every call (claim, commit, release, ping) is tried again
//! **once**, on the new connection, when its first attempt failed because the
//! connection was dropped (broken pipe, reset, aborted, refused, unexpected
//! EOF: [`redis::RedisError::is_connection_dropped`]; the manager has already
//! replaced the connection when it returns one of these). Only the second
//! failure is a store error. Both attempts share one deadline: a call never
//! takes longer than `redis_timeout` in all.
//!
//! A retry is safe for every call, even when the first attempt did run in
//! Redis and only its reply was lost with the connection: commit (`SET
//! delivered`), release (compare-and-delete) and `PING` are idempotent, and the
//! claim is retried with the *same* token, which the claim script recognises:
//! finding its own `inflight:<token>` it answers "claimed" (renewing the
//! lease) instead of "in flight". Without that, a claim whose first attempt
//! ran would be answered 409 by its own mark, and that mark, which nobody
//! would settle, would hold the event for `inflight_ttl`. (Tokens are random
//! 64-bit values, one per claim: another delivery holding the same token is a
//! 2^-64 chance.)
//!
//! A call that **timed out** is not retried. Its budget is spent (the bound is
//! per call, not per attempt), and a timeout says nothing about whether Redis
//! ran the command: it may still be queued behind a slow command or a paused
//! server, so a second attempt would only add load to a Redis that is already
//! late. (For a claim the same-token rule would make such a retry harmless,
//! but it could not answer sooner than the first attempt; the first attempt's
//! late answer is handled below instead.)
//!
//! # A claim that timed out
//!
//! A claim that the caller gave up on (it timed out, or the request was
//! cancelled) may still run in Redis later and leave an in-flight mark that
//! nobody settles, which would answer 409 to Persona's retries for up to
//! `inflight_ttl`. Claims therefore run as tasks on the store's own runtime
//! that outlive their caller: the task keeps waiting for the answer (up to
//! `inflight_ttl`, after which any mark it made has expired by itself) and
//! releases the claim by its token when nobody else will settle it: the answer
//! is "claimed" but the caller is gone (also when the answer reached the
//! channel but the request was dropped before reading it), or the claim may
//! have run without its answer arriving (the connection dropped mid-call, or
//! no answer within `inflight_ttl`). The release is the usual
//! compare-and-delete, so it can only remove this claim's own mark, and it is
//! a no-op if the claim never ran.
//!
//! The client runs on a small runtime of its own so it outlives no pingora
//! service and is shared by all of them. Every call is bounded by `timeout`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, Script, Value};
use tokio::sync::oneshot;

use crate::claim::Claim;

const DELIVERED: &str = "delivered";

/// Returns `{1, 0}` claimed (also when the key already holds this claim's own
/// token: an earlier attempt of the same claim whose reply was lost), `{2,
/// pttl}` delivered, `{3, pttl}` another claim in flight.
const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local ttl = redis.call('PTTL', KEYS[1])
if v == 'delivered' then return {2, ttl} end
return {3, ttl}
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The Redis key of an event id on a route (see the module documentation).
pub fn key(prefix: &str, route: &[u8], event_id: &str) -> Vec<u8> {
    let escapes = route.iter().filter(|b| matches!(b, b'%' | b':')).count();
    let mut k = Vec::with_capacity(prefix.len() + route.len() + 2 * escapes + 1 + event_id.len());
    k.extend_from_slice(prefix.as_bytes());
    for &b in route {
        match b {
            b'%' => k.extend_from_slice(b"%25"),
            b':' => k.extend_from_slice(b"%3A"),
            _ => k.push(b),
        }
    }
    k.push(b':');
    k.extend_from_slice(event_id.as_bytes());
    k
}

fn inflight_value(token: u64) -> String {
    format!("inflight:{token:016x}")
}

/// Whether the connection was dropped, so the manager has replaced it and the
/// call may be tried once more (see the module documentation). A timeout is not.
fn is_dropped(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

/// Why a Redis call failed. Never carries the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Redis(String),
    #[error("cannot start the redis client: {0}")]
    Setup(String),
}

pub struct RedisStore {
    inner: Arc<Inner>,
    /// Drives the connection. Shut down in the background on drop, which is
    /// allowed from inside another runtime (a blocking drop is not).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What the claims that run on the store's runtime share with it.
struct Inner {
    manager: ConnectionManager,
    claim: Script,
    release: Script,
    prefix: String,
    timeout: Duration,
    /// The store's runtime, where claims and late releases run.
    handle: tokio::runtime::Handle,
}

/// The answer of a claim task to its caller.
enum Answer {
    /// This claim holds the mark; released on drop unless the caller takes it.
    Mine(Abandoned),
    /// Someone else's mark.
    Theirs(Claim),
}

/// A claim whose mark may exist in Redis and that nobody will settle unless
/// [`Abandoned::adopt`] is called: dropping it releases the mark by its token
/// in the background.
struct Abandoned {
    inner: Arc<Inner>,
    key: Vec<u8>,
    token: u64,
    armed: bool,
    /// Redis answered "claimed" (else the claim only may have run).
    known: bool,
}

impl Abandoned {
    /// The caller settles the claim itself (commit or release).
    fn adopt(mut self) -> u64 {
        self.armed = false;
        self.token
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = self.inner.clone();
        let key = std::mem::take(&mut self.key);
        let (token, known) = (self.token, self.known);
        // A runtime that is shutting down drops the task: the mark then
        // expires after `inflight_ttl`.
        self.inner.handle.spawn(async move {
            const GONE: &str = "a replay claim its caller did not take";
            match inner.release(&key, token).await {
                Ok(true) => tracing::info!("released the in-flight mark of {GONE}"),
                Ok(false) => {}
                Err(e) if known => tracing::warn!(
                    error = %e,
                    "cannot release {GONE}: its in-flight mark expires after inflight_ttl"
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot release {GONE} (it may not have run)")
                }
            }
        });
    }
}

impl Inner {
    /// Runs `op` on the current connection and, if that connection turned out
    /// dropped and `still_wanted()`, once more on the new one.
    async fn retrying<T, Op, Fut>(
        &self,
        still_wanted: impl Fn() -> bool,
        mut op: Op,
    ) -> RedisResult<T>
    where
        Op: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match op(self.manager.clone()).await {
            Err(e) if is_dropped(&e) && still_wanted() => {
                tracing::debug!(
                    error = describe(&e),
                    "redis connection dropped: retrying once on a new connection"
                );
                op(self.manager.clone()).await
            }
            other => other,
        }
    }

    /// Deletes the key if it still holds this token's in-flight mark; whether it did.
    async fn release(&self, key: &[u8], token: u64) -> Result<bool, RedisStoreError> {
        let value = inflight_value(token);
        let deleted: i64 = self
            .bounded(self.retrying(
                || true,
                |mut con| {
                    let mut inv = self.release.key(key);
                    inv.arg(value.as_str());
                    async move { inv.invoke_async(&mut con).await }
                },
            ))
            .await?;
        Ok(deleted == 1)
    }

    /// Bounds a whole call (every attempt of it) by `timeout`.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisStoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(RedisStoreError::Redis(describe(&e))),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

impl RedisStore {
    /// Creates the client; the connection is made lazily and re-made after failures.
    pub fn new(
        url: &str,
        password: Option<&[u8]>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisStoreError> {
        let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| RedisStoreError::Setup(format!("{:?}", e.kind())))?;
        if let Some(pw) = password {
            let pw = String::from_utf8(pw.to_vec())
                .map_err(|_| RedisStoreError::Setup("the password is not UTF-8".into()))?;
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)
            .map_err(|e| RedisStoreError::Setup(format!("{:?}", e.kind())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| RedisStoreError::Setup(e.to_string()))?;
        // No response timeout in the client: every call is bounded here, and a
        // claim task must still see a late reply (see the module documentation).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = {
            let _enter = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| RedisStoreError::Setup(format!("{:?}", e.kind())))?
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                manager,
                claim: Script::new(CLAIM),
                release: Script::new(RELEASE),
                prefix: prefix.to_string(),
                timeout,
                handle: runtime.handle().clone(),
            }),
            runtime: Some(runtime),
        })
    }

    fn key(&self, route: &[u8], event_id: &str) -> Vec<u8> {
        key(&self.inner.prefix, route, event_id)
    }

    /// Claims the event id for one delivery (at most `inflight_ttl` unless
    /// renewed). Runs on the store's runtime so that a claim its caller gave
    /// up on is still settled (see the module documentation).
    pub async fn claim(
        &self,
        route: &[u8],
        event_id: &str,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, RedisStoreError> {
        let inner = self.inner.clone();
        let key = self.key(route, event_id);
        let (tx, rx) = oneshot::channel::<Result<Answer, RedisStoreError>>();
        self.inner.handle.spawn(async move {
            let value = inflight_value(token);
            let ms = inflight_ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
            // Past `inflight_ttl` any mark this claim made has expired by itself.
            let late_window = inflight_ttl.max(inner.timeout);
            let attempts = inner.retrying(
                || !tx.is_closed(),
                |mut con| {
                    let mut inv = inner.claim.key(key.as_slice());
                    inv.arg(value.as_str()).arg(ms);
                    async move { inv.invoke_async::<(i64, i64)>(&mut con).await }
                },
            );
            let outcome = tokio::time::timeout(late_window, attempts).await;
            let abandoned = |known| Abandoned {
                inner: inner.clone(),
                key: key.clone(),
                token,
                armed: true,
                known,
            };
            let answer = match outcome {
                Ok(Ok((1, _))) => Ok(Answer::Mine(abandoned(true))),
                Ok(Ok((2, _))) => Ok(Answer::Theirs(Claim::Duplicate)),
                Ok(Ok((_, pttl))) => Ok(Answer::Theirs(Claim::InFlight {
                    retry_after: Duration::from_millis(pttl.max(0) as u64),
                })),
                // The claim may have run and only its answer been lost (the
                // connection dropped mid-call, or no answer in time): nobody
                // will settle it, so release it by token (a no-op if it did
                // not run). A refused connection or a Redis error did not run.
                Ok(Err(e)) => {
                    if !(e.is_connection_refusal()
                        || matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension))
                    {
                        drop(abandoned(false));
                    }
                    Err(RedisStoreError::Redis(describe(&e)))
                }
                Err(_) => {
                    drop(abandoned(false));
                    Err(RedisStoreError::Timeout(inner.timeout))
                }
            };
            // A caller that is gone drops the answer, and with it a claimed
            // answer's `Abandoned`, which releases the claim.
            let _ = tx.send(answer);
        });
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Err(_) => Err(RedisStoreError::Timeout(self.inner.timeout)),
            Ok(Err(_)) => Err(RedisStoreError::Redis("the redis client stopped".into())),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(Answer::Mine(claim)))) => Ok(Claim::Claimed(claim.adopt())),
            Ok(Ok(Ok(Answer::Theirs(c)))) => Ok(c),
        }
    }

    pub async fn commit(
        &self,
        route: &[u8],
        event_id: &str,
        ttl: Duration,
    ) -> Result<(), RedisStoreError> {
        let key = self.key(route, event_id);
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(DELIVERED).arg("PX").arg(ms);
        let cmd = &cmd;
        let inner = &self.inner;
        let _: Value = inner
            .bounded(inner.retrying(
                || true,
                |mut con| async move { cmd.query_async(&mut con).await },
            ))
            .await?;
        Ok(())
    }

    pub async fn release(
        &self,
        route: &[u8],
        event_id: &str,
        token: u64,
    ) -> Result<(), RedisStoreError> {
        self.inner
            .release(&self.key(route, event_id), token)
            .await
            .map(|_| ())
    }

    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let inner = &self.inner;
        let _: String = inner
            .bounded(inner.retrying(
                || true,
                |mut con| async move { redis::cmd("PING").query_async(&mut con).await },
            ))
            .await?;
        Ok(())
    }
}

/// A short description of a Redis error that cannot contain the URL.
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection failed".into()
    } else {
        format!("{:?}", e.kind())
    }
}

#[cfg(test)]
mod tests {
    //! Against a real `redis-server` (started here on a free loopback port).
    use super::*;
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
        let a = RedisStore::new(&url, None, "t:", Duration::from_secs(1)).unwrap();
        let b = RedisStore::new(&url, None, "t:", Duration::from_secs(1)).unwrap();
        rt().block_on(async {
            let long = Duration::from_secs(60);
            let route = b"/r".as_slice();
            a.ping().await.unwrap();

            // One claim wins; the other client sees it in flight.
            let t1 = claimed(a.claim(route, "e1", 1, long).await.unwrap());
            match b.claim(route, "e1", 2, long).await.unwrap() {
                Claim::InFlight { retry_after } => assert!(retry_after <= long),
                other => panic!("{other:?}"),
            }
            // Another client's token cannot release it; the owner's can.
            b.release(route, "e1", 2).await.unwrap();
            assert!(matches!(
                b.claim(route, "e1", 3, long).await.unwrap(),
                Claim::InFlight { .. }
            ));
            a.release(route, "e1", t1).await.unwrap();
            let t4 = claimed(b.claim(route, "e1", 4, long).await.unwrap());

            // Delivered: a duplicate for everyone; a late release changes nothing.
            b.commit(route, "e1", long).await.unwrap();
            a.release(route, "e1", t4).await.unwrap();
            assert_eq!(
                a.claim(route, "e1", 5, long).await.unwrap(),
                Claim::Duplicate
            );

            // An in-flight mark expires by itself (a crashed instance).
            claimed(
                a.claim(route, "e2", 6, Duration::from_millis(150))
                    .await
                    .unwrap(),
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            claimed(b.claim(route, "e2", 7, long).await.unwrap());
            // ...and the crashed instance's late release does not free the new claim.
            a.release(route, "e2", 6).await.unwrap();
            assert!(matches!(
                a.claim(route, "e2", 8, long).await.unwrap(),
                Claim::InFlight { .. }
            ));

            // Routes are separate namespaces.
            claimed(a.claim(b"/other", "e1", 9, long).await.unwrap());
        });
    }

    #[test]
    fn a_claim_retried_with_its_own_token_is_still_claimed() {
        // What a retry sees when the first attempt ran but its reply was lost.
        let server = Server::start();
        let a = RedisStore::new(&server.url(), None, "t:", Duration::from_secs(1)).unwrap();
        rt().block_on(async {
            let long = Duration::from_secs(60);
            let route = b"/r".as_slice();
            assert_eq!(claimed(a.claim(route, "e", 7, long).await.unwrap()), 7);
            // The same token again: claimed (not "in flight"), lease renewed...
            assert_eq!(claimed(a.claim(route, "e", 7, long).await.unwrap()), 7);
            // ...while any other token is still refused,
            assert!(matches!(
                a.claim(route, "e", 8, long).await.unwrap(),
                Claim::InFlight { .. }
            ));
            // and a delivered mark stays a duplicate even for that token.
            a.commit(route, "e", long).await.unwrap();
            assert_eq!(
                a.claim(route, "e", 7, long).await.unwrap(),
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
        let a = RedisStore::new(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
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
            let t = claimed(a.claim(route, "e1", 1, long).await.unwrap());
            kill();
            a.release(route, "e1", t).await.unwrap();
            claimed(a.claim(route, "e1", 2, long).await.unwrap());
            kill();
            a.commit(route, "e1", long).await.unwrap();
            kill();
            assert_eq!(
                a.claim(route, "e1", 3, long).await.unwrap(),
                Claim::Duplicate
            );
        });
    }

    #[test]
    fn a_claim_that_timed_out_is_released_when_its_late_reply_arrives() {
        let server = Server::start();
        let a = RedisStore::new(&server.url(), None, "t:", Duration::from_millis(200)).unwrap();
        let b = RedisStore::new(&server.url(), None, "t:", Duration::from_secs(5)).unwrap();
        let long = Duration::from_secs(60);
        let route = b"/r".as_slice();
        let rt = rt();
        // Warm up: connections made and both scripts loaded.
        rt.block_on(async {
            let t = claimed(a.claim(route, "warm", 1, long).await.unwrap());
            a.release(route, "warm", t).await.unwrap();
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
        let r = rt.block_on(a.claim(route, "late", 2, long));
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
            claimed(b.claim(route, "late", 3, long).await.unwrap());
        });
        // The claim did run (its SET made the mark) and the release deleted it.
        assert_eq!(server.calls("del"), 1, "the late mark was deleted");
        assert!(server.calls("set") >= 2, "both claims ran");
    }

    #[test]
    fn a_claim_answered_in_time_is_not_released() {
        // The twin of the test above: with time to answer, the mark stays.
        let server = Server::start();
        let a = RedisStore::new(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
        let b = RedisStore::new(&server.url(), None, "t:", Duration::from_secs(2)).unwrap();
        rt().block_on(async {
            let long = Duration::from_secs(60);
            a.ping().await.unwrap();
            assert!(
                server
                    .command(&["CLIENT", "PAUSE", "300", "ALL"])
                    .starts_with("+OK")
            );
            claimed(a.claim(b"/r", "late", 2, long).await.unwrap());
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(matches!(
                b.claim(b"/r", "late", 3, long).await.unwrap(),
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
        let s = RedisStore::new(&url, None, "t:", Duration::from_millis(200)).unwrap();
        let rt = rt();
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let r = rt.block_on(s.claim(b"/r", "e", 1, Duration::from_secs(1)));
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

    mod keys {
        use super::*;
        use proptest::prelude::*;

        /// Reads a key back; `key` is injective because this always succeeds.
        fn parse(prefix: &str, k: &[u8]) -> (Vec<u8>, String) {
            let rest = k.strip_prefix(prefix.as_bytes()).unwrap();
            let colon = rest.iter().position(|b| *b == b':').unwrap();
            let (escaped, id) = (&rest[..colon], &rest[colon + 1..]);
            let mut route = Vec::new();
            let mut i = 0;
            while i < escaped.len() {
                match &escaped[i..] {
                    [b'%', b'2', b'5', ..] => (route.push(b'%'), i += 3),
                    [b'%', b'3', b'A', ..] => (route.push(b':'), i += 3),
                    [b'%', ..] => panic!("a lone % in {k:?}"),
                    [b, ..] => (route.push(*b), i += 1),
                    [] => unreachable!(),
                };
            }
            (route, String::from_utf8(id.to_vec()).unwrap())
        }

        #[test]
        fn the_old_collision_is_gone() {
            let p = "persona-guard:";
            assert_ne!(key(p, b"/a:b", "c"), key(p, b"/a", "b:c"));
            assert_eq!(key(p, b"/a:b", "c"), b"persona-guard:/a%3Ab:c");
            assert_eq!(key(p, b"/a", "b:c"), b"persona-guard:/a:b:c");
            // `%` is escaped too, so an escape cannot be forged by a route.
            assert_ne!(key(p, b"/a%3Ab", "c"), key(p, b"/a:b", "c"));
            assert_eq!(key(p, b"/a%3Ab", "c"), b"persona-guard:/a%253Ab:c");
        }

        #[test]
        fn keys_of_ordinary_routes_are_unchanged() {
            // The format before this change, for routes without `%` or `:`:
            // marks written by an older version are still found.
            assert_eq!(
                key("persona-guard:", b"/webhooks/persona", "evt_1"),
                b"persona-guard:/webhooks/persona:evt_1"
            );
        }

        /// Routes and ids from the characters that could make keys ambiguous.
        fn tricky() -> impl Strategy<Value = String> {
            "[/:%3Aab5]{0,8}"
        }

        proptest! {
            #[test]
            fn a_key_reads_back_as_its_route_and_event_id(
                route in prop::collection::vec(any::<u8>(), 0..24),
                id in any::<String>(),
                prefix in "[a-z:]{0,6}",
            ) {
                let k = key(&prefix, &route, &id);
                prop_assert_eq!(parse(&prefix, &k), (route, id));
            }

            #[test]
            fn distinct_inputs_never_share_a_key(
                r1 in tricky(), i1 in tricky(), r2 in tricky(), i2 in tricky(),
            ) {
                let p = "persona-guard:";
                let same_key = key(p, r1.as_bytes(), &i1) == key(p, r2.as_bytes(), &i2);
                prop_assert_eq!(same_key, (r1, i1) == (r2, i2));
            }

            #[test]
            fn routes_without_percent_or_colon_keep_the_old_key(
                route in "/[a-zA-Z0-9/._~-]{0,20}",
                id in "[ -~]{1,20}",
            ) {
                let old = format!("persona-guard:{route}:{id}");
                prop_assert_eq!(key("persona-guard:", route.as_bytes(), &id), old.into_bytes());
            }
        }
    }
}
