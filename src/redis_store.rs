//! The Redis replay store: one replay memory shared by every replica.
//!
//! The same state machine as the memory store (see `replay.rs`), made atomic
//! across instances by Redis itself:
//!
//! * claim: `SET key inflight:<token> NX PX inflight_ttl` in a Lua script that,
//!   when the key exists, reports in the same round trip whether it is
//!   delivered or in flight and for how long;
//! * commit: `SET key delivered PX ttl`;
//! * release: a Lua compare-and-delete of *this* claim's value only, so a late
//!   release never deletes another instance's claim or a delivered mark.
//!
//! Keys are `<key_prefix><route path>:<event id>` (readable with `redis-cli`).
//! The client is `redis`'s `ConnectionManager`, which reconnects by itself; it
//! runs on a small runtime of its own so it outlives no pingora service and is
//! shared by all of them. Every call is bounded by `timeout`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::replay::Claim;

const DELIVERED: &str = "delivered";

const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
local v = redis.call('GET', KEYS[1])
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
    manager: ConnectionManager,
    claim: Script,
    release: Script,
    prefix: String,
    timeout: Duration,
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = {
            let _enter = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| RedisStoreError::Setup(format!("{:?}", e.kind())))?
        };
        Ok(RedisStore {
            manager,
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            prefix: prefix.to_string(),
            timeout,
            runtime: Some(runtime),
        })
    }

    fn key(&self, route: &[u8], event_id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + route.len() + 1 + event_id.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(route);
        k.push(b':');
        k.extend_from_slice(event_id.as_bytes());
        k
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisStoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(RedisStoreError::Redis(describe(&e))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub async fn claim(
        &self,
        route: &[u8],
        event_id: &str,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<Claim, RedisStoreError> {
        let mut con = self.manager.clone();
        let key = self.key(route, event_id);
        let value = format!("inflight:{token:016x}");
        let ms = inflight_ttl.as_millis().max(1) as u64;
        let mut inv = self.claim.key(key);
        inv.arg(value).arg(ms);
        let (kind, pttl): (i64, i64) = self.bounded(inv.invoke_async(&mut con)).await?;
        let remaining = Duration::from_millis(pttl.max(0) as u64);
        Ok(match kind {
            1 => Claim::Claimed(token),
            2 => Claim::Duplicate,
            _ => Claim::InFlight {
                retry_after: remaining,
            },
        })
    }

    pub async fn commit(
        &self,
        route: &[u8],
        event_id: &str,
        ttl: Duration,
    ) -> Result<(), RedisStoreError> {
        let mut con = self.manager.clone();
        let key = self.key(route, event_id);
        let ms = ttl.as_millis().max(1) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(DELIVERED).arg("PX").arg(ms);
        let _: Value = self.bounded(cmd.query_async(&mut con)).await?;
        Ok(())
    }

    pub async fn release(
        &self,
        route: &[u8],
        event_id: &str,
        token: u64,
    ) -> Result<(), RedisStoreError> {
        let mut con = self.manager.clone();
        let mut inv = self.release.key(self.key(route, event_id));
        inv.arg(format!("inflight:{token:016x}"));
        let _: i64 = self.bounded(inv.invoke_async(&mut con)).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let mut con = self.manager.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut con))
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
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
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
        let url = format!("redis://127.0.0.1:{}/0", server.1);
        let a = RedisStore::new(&url, None, "t:", Duration::from_secs(1)).unwrap();
        let b = RedisStore::new(&url, None, "t:", Duration::from_secs(1)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
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
    fn an_unreachable_server_is_an_error_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let url = format!("redis://127.0.0.1:{port}/0");
        let s = RedisStore::new(&url, None, "t:", Duration::from_millis(200)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let r = rt.block_on(s.claim(b"/r", "e", 1, Duration::from_secs(1)));
        assert!(r.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(!r.unwrap_err().to_string().contains(&port.to_string()));
    }
}
