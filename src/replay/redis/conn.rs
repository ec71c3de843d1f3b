//! The connection to Redis and the calls made on it: one `ConnectionManager`
//! driven by the store's own runtime, every call bounded by `timeout` and
//! tried once more when its connection was dropped, or answered `READONLY`
//! (see "Retries" in the parent module).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script, Value};

use crate::replay::Mark;

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

impl RedisStoreError {
    /// The store's runtime is gone (the store was closed).
    pub(super) fn stopped() -> Self {
        RedisStoreError::Redis("the redis client stopped".into())
    }
}

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

/// Take-over (a spooled delivery's mark passing to the instance that
/// redelivers it): the key gets the new token's mark (`ARGV[1]`, for `ARGV[2]` ms)
/// when it is absent or still holds the old token's mark (`ARGV[3]`) or already
/// the new one (a retried call); otherwise answered like a claim.
const TAKE_OVER: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0}
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local ttl = redis.call('PTTL', KEYS[1])
if v == 'delivered' then return {2, ttl} end
return {3, ttl}
"#;

/// Compare-and-pexpire: extends the key only while it holds this claim's
/// in-flight mark; 1 if it did.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// The value of an in-flight mark.
pub(super) fn inflight_value(token: u64) -> String {
    format!("inflight:{token:016x}")
}

/// A duration as the whole milliseconds Redis takes (at least 1).
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// Whether the connection was dropped, so the manager has replaced it and the
/// call may be tried once more (see the parent module). A timeout is not.
fn is_dropped(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

/// Whether Redis refused a write as a read-only replica: after a failover the
/// connection still reaches the demoted primary, which never writes again,
/// while a new connection to the same address reaches the new primary.
fn is_read_only(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A short description of a Redis error that cannot contain the URL.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection failed".into()
    } else {
        format!("{:?}", e.kind())
    }
}

/// Stops a client's runtime (once), and with it the connection and every task
/// on it; for the stores' close and drop.
pub(crate) fn shut_down(runtime: &std::sync::Mutex<Option<tokio::runtime::Runtime>>) {
    let runtime = runtime
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(rt) = runtime {
        rt.shutdown_background();
    }
}

/// What every call shares: the connection, the scripts, the bound.
pub(crate) struct Inner {
    /// The connection every call uses; replaced by a new one to the same
    /// address when Redis answers `READONLY` (see [`Inner::retrying`]).
    manager: ArcSwap<ConnectionManager>,
    /// What a replacement connection is made from.
    client: redis::Client,
    config: ConnectionManagerConfig,
    claim: Script,
    release: Script,
    renew: Script,
    take_over: Script,
    pub(crate) timeout: Duration,
    /// The store's runtime, where every call and every late release runs.
    pub(crate) handle: tokio::runtime::Handle,
}

impl Inner {
    /// The client of `url`, its connection made lazily on `runtime` and re-made
    /// after failures.
    pub(crate) fn connect(
        url: &str,
        password: Option<&[u8]>,
        timeout: Duration,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Self, RedisStoreError> {
        let setup = |e: redis::RedisError| RedisStoreError::Setup(format!("{:?}", e.kind()));
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(url).map_err(setup)?;
        if let Some(pw) = password {
            let pw = String::from_utf8(pw.to_vec())
                .map_err(|_| RedisStoreError::Setup("the password is not UTF-8".into()))?;
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(setup)?;
        // No response timeout in the client: every call is bounded here, and a
        // claim task must still see a late reply (see the parent module).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = {
            let _enter = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(setup)?
        };
        Ok(Inner {
            manager: ArcSwap::from_pointee(manager),
            client,
            config,
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            take_over: Script::new(TAKE_OVER),
            timeout,
            handle: runtime.handle().clone(),
        })
    }

    /// Runs `call` as a task on the store's runtime, so that the connection
    /// and everything it spawns live there (and stop with it), and awaits it.
    pub(crate) async fn on_runtime<T, Fut>(
        self: &Arc<Self>,
        call: impl FnOnce(Arc<Inner>) -> Fut,
    ) -> Result<T, RedisStoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, RedisStoreError>> + Send + 'static,
    {
        match self.handle.spawn(call(self.clone())).await {
            Ok(answer) => answer,
            Err(_) => Err(RedisStoreError::stopped()),
        }
    }

    /// Runs `op` on the current connection and, if that connection turned out
    /// dropped and `still_wanted()`, once more on the new one.
    pub(crate) async fn retrying<T, Op, Fut>(
        &self,
        still_wanted: impl Fn() -> bool,
        mut op: Op,
    ) -> RedisResult<T>
    where
        Op: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let first = self.manager.load_full();
        match op((*first).clone()).await {
            Err(e) if is_dropped(&e) && still_wanted() => {
                tracing::debug!(
                    error = describe(&e),
                    "redis connection dropped: retrying once on a new connection"
                );
                op((**self.manager.load()).clone()).await
            }
            Err(e) if is_read_only(&e) && still_wanted() => {
                self.replace(&first);
                op((**self.manager.load()).clone()).await
            }
            other => other,
        }
    }

    /// A new connection in place of `failed` (if no other call replaced it
    /// already), made lazily to the same address: after a failover that
    /// address names the new primary. Runs on the store's runtime.
    fn replace(&self, failed: &Arc<ConnectionManager>) {
        if !Arc::ptr_eq(&self.manager.load(), failed) {
            return;
        }
        let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        else {
            return;
        };
        let before = self.manager.compare_and_swap(failed, Arc::new(fresh));
        if Arc::ptr_eq(&before, failed) {
            tracing::warn!(
                "redis answered READONLY (a replica, after a failover?): reconnecting to the configured address"
            );
        }
    }

    /// Bounds a whole call (every attempt of it) by `timeout`.
    pub(crate) async fn bounded<T>(
        &self,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisStoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(RedisStoreError::Redis(describe(&e))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// One attempt chain of the claim script, unbounded: the claim task bounds
    /// it itself and stops retrying once `still_wanted()` is false.
    pub(super) async fn claim_script(
        &self,
        key: &[u8],
        token: u64,
        inflight_ttl: Duration,
        still_wanted: impl Fn() -> bool,
    ) -> RedisResult<(i64, i64)> {
        let value = inflight_value(token);
        let ms = millis(inflight_ttl);
        self.retrying(still_wanted, |mut con| {
            let mut inv = self.claim.key(key);
            inv.arg(value.as_str()).arg(ms);
            async move { inv.invoke_async::<(i64, i64)>(&mut con).await }
        })
        .await
    }

    /// Runs `script` with `keys` and `args`, bounded and retried once on a
    /// dropped connection: every script here is idempotent for its arguments.
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> Result<T, RedisStoreError> {
        self.bounded(self.retrying(
            || true,
            |mut con| {
                let mut inv = script.prepare_invoke();
                for k in keys {
                    inv.key(k.as_slice());
                }
                for a in args {
                    inv.arg(a.as_slice());
                }
                async move { inv.invoke_async::<T>(&mut con).await }
            },
        ))
        .await
    }

    /// Deletes the key if it still holds this token's in-flight mark; whether it did.
    pub(super) async fn release(&self, key: &[u8], token: u64) -> Result<bool, RedisStoreError> {
        let args = [inflight_value(token).into_bytes()];
        let deleted: i64 = self.eval(&self.release, &[key.to_vec()], &args).await?;
        Ok(deleted == 1)
    }

    /// Extends the key to `inflight_ttl` if it still holds this token's
    /// in-flight mark; whether it did. Idempotent, so retried like the others.
    pub(super) async fn renew(
        &self,
        key: &[u8],
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<bool, RedisStoreError> {
        let args = [
            inflight_value(token).into_bytes(),
            millis(inflight_ttl).to_string().into_bytes(),
        ];
        let renewed: i64 = self.eval(&self.renew, &[key.to_vec()], &args).await?;
        Ok(renewed == 1)
    }

    /// Gives the key `token`'s in-flight mark when it is absent or holds
    /// `old`'s (see `TAKE_OVER`); answered like a claim otherwise. Idempotent
    /// for one `token`, so retried like the others.
    pub(super) async fn take_over(
        &self,
        key: &[u8],
        old: u64,
        token: u64,
        inflight_ttl: Duration,
    ) -> Result<(i64, i64), RedisStoreError> {
        let args = [
            inflight_value(token).into_bytes(),
            millis(inflight_ttl).to_string().into_bytes(),
            inflight_value(old).into_bytes(),
        ];
        self.eval(&self.take_over, &[key.to_vec()], &args).await
    }

    /// `SET key delivered PX ttl`.
    pub(super) async fn commit(&self, key: &[u8], ttl: Duration) -> Result<(), RedisStoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(DELIVERED).arg("PX").arg(millis(ttl));
        let cmd = &cmd;
        let _: Value = self
            .bounded(self.retrying(
                || true,
                |mut con| async move { cmd.query_async(&mut con).await },
            ))
            .await?;
        Ok(())
    }

    /// `MGET keys`: `delivered`, an in-flight mark, or nothing, per key.
    pub(super) async fn peek(&self, keys: &[Vec<u8>]) -> Result<Vec<Mark>, RedisStoreError> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(k.as_slice());
        }
        let cmd = &cmd;
        let values: Vec<Option<Vec<u8>>> = self
            .bounded(self.retrying(
                || true,
                |mut con| async move { cmd.query_async(&mut con).await },
            ))
            .await?;
        Ok(values
            .into_iter()
            .map(|v| match v {
                None => Mark::Absent,
                Some(v) if v == DELIVERED.as_bytes() => Mark::Delivered,
                Some(_) => Mark::InFlight,
            })
            .collect())
    }

    pub(super) async fn ping(&self) -> Result<(), RedisStoreError> {
        let _: String = self
            .bounded(self.retrying(
                || true,
                |mut con| async move { redis::cmd("PING").query_async(&mut con).await },
            ))
            .await?;
        Ok(())
    }
}
