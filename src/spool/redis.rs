//! The Redis spool (see [`crate::spool`]): one spool shared by every replica,
//! a Redis stream per route read through one consumer group.
//!
//! Every replica is a *consumer* of the group `persona-guard` with a name of
//! its own (`pg-<hostname>-<pid>-<random hex>`, new for every [`RedisSpool`]),
//! so Redis itself keeps track of which replica holds which entry (the
//! group's pending entries list) and for how long it has been silent. A
//! spool leaves the group on close when it holds nothing, so replicas that
//! come and go do not pile up consumers:
//!
//! * put: a Lua script checks the deployment's byte counter against
//!   `max_bytes` and, in the same step, `XADD`s the entry (fields `r`, the
//!   encoded record, and `n`, its [`Record::size`]) and `INCRBY`s the counter.
//!   Check and add are one script so that two replicas cannot both pass the
//!   check with the last free bytes;
//! * take: `XAUTOCLAIM` first (entries another consumer held for longer than
//!   `min_idle`: a replica that died or stalled mid-delivery), then
//!   `XREADGROUP ... >` for entries never handed out, in one script that also
//!   creates the group (`XGROUP CREATE ... 0 MKSTREAM`; `BUSYGROUP` is the
//!   usual answer and ignored). Creating it on every take instead of once per
//!   route and process is what makes a Redis that lost its data (restart
//!   without persistence, `FLUSHALL`) work again without a restart of ours.
//!   `XREADGROUP` has no `BLOCK`: the connection is multiplexed, and a blocked
//!   read would hold up every other call; the worker polls instead;
//! * keep: `XCLAIM ... 0 <ids> JUSTID` resets the entries' idle time, so no
//!   other replica's `XAUTOCLAIM` takes them over while this one delivers;
//! * remove, bury, delete a dead letter: Lua scripts that read the entry's `n`
//!   and move or delete it and adjust the counter in one step, so the counter
//!   never drifts from the entries it counts when a replica dies between two
//!   commands;
//! * revive: the dead letter is read and decoded here (the record may be
//!   sealed with `[spool] key`, which Redis never sees), `live_since_ms` set
//!   and re-encoded, then a script moves it only if the dead letter is still
//!   there, so two operators' retries revive it once.
//!
//! An entry is `XACK`ed *and* `XDEL`ed when it leaves the live stream, so
//! `XLEN` is the live depth and the byte counter only counts what is stored.
//!
//! # Keys
//!
//! With the `[redis] key_prefix` and the route escaped exactly as the replay
//! store escapes it (every `%` written `%25`, every `:` `%3A`; see
//! [`crate::replay::redis::keys`]), so distinct routes never share a stream:
//!
//! * `<prefix>spool:<route>`: the live stream of a route;
//! * `<prefix>spool-dead:<route>`: its dead letters;
//! * `<prefix>spool-bytes`: bytes held, live and dead, of every route (one
//!   counter per deployment, as `max_bytes` is one limit per deployment);
//! * `<prefix>spool-put:<random hex>`: a put's own mark for 60 seconds, so a
//!   put retried after a dropped connection does not store its entry twice
//!   (see [retries](#retries)).
//!
//! Scripts touch several of these keys at once, so a Redis Cluster must keep
//! them in one slot (a `key_prefix` with a hash tag, e.g. `{pg}:`).
//!
//! # Durability
//!
//! `put` succeeds once Redis acknowledged the `XADD`: the entry is in Redis's
//! memory and survives `kill -9` of persona-guard, not necessarily a crash of
//! Redis. A deployment that wants the entry on disk before Persona hears 202
//! runs Redis with `appendonly yes` and `appendfsync always` (or accepts
//! `everysec`'s one second); a replica (`WAIT`) is the deployment's choice
//! too. Nothing here can make a Redis without persistence durable.
//!
//! # Retries
//!
//! As in the replay store (and with its code, [`crate::replay::redis`]'s
//! `conn`): every call runs on a one-thread runtime of the spool's own, is
//! bounded by `timeout` in all, and is tried once more when its connection
//! turned out dropped. A retry is safe for every call even when the first
//! attempt ran and only its reply was lost:
//!
//! * put carries a random nonce; the script records the id it stored under
//!   it, and the retry finds it and answers that id instead of adding again;
//! * take's lost entries sit in this consumer's pending list and come back
//!   (to this replica or another) through `XAUTOCLAIM` after `min_idle`;
//! * keep, remove and bury are idempotent (an absent entry is a no-op);
//! * revive and delete of a dead letter answer [`SpoolError::NotFound`] on a
//!   retry whose first attempt did run: the operator sees the outcome in the
//!   listing.
//!
//! # Entries that do not decode
//!
//! An entry that does not decode (another key, a damaged or foreign value)
//! is left in Redis, never deleted, and skipped: it stays in the pending
//! list of the replica that read it, which does not keep it, so it comes
//! back to some replica through `XAUTOCLAIM` only after `min_idle` (the
//! replay store's `inflight_ttl`), never in a hot loop. Each replica logs
//! such an entry by id once per process and counts it: [`RouteStats`]'s
//! `unreadable` is what *this* replica found undecodable (live and dead) and
//! still in its stream when it last looked, and it is left out of `depth`
//! and `dead`.
//!
//! # Errors
//!
//! Every Redis failure is [`SpoolError::Unavailable`] with the replay store's
//! sanitised description (a timeout, "connection failed" or the error's kind):
//! never the URL, the password or a record's bytes.
//!
//! # Layout
//!
//! `scripts` holds the Lua scripts, `store` the [`SpoolStore`] calls, this
//! file the spool and the codec shim.

mod scripts;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::{FromRedisValue, Script};

use super::{Entry, SpoolError};
#[cfg(doc)]
use super::{Record, RouteStats, SpoolStore};
use crate::config::RedisSettings;
use crate::config::SpoolKey;
use crate::replay::redis::conn::{self, Inner, RedisStoreError};
use crate::replay::redis::keys;

use super::codec::decode;

/// The consumer group every replica reads through.
pub const GROUP: &str = "persona-guard";

/// How long a put's nonce mark lives: far longer than any call (`timeout`
/// bounds both attempts of a put), short enough to cost nothing.
const PUT_MARK_TTL: Duration = Duration::from_secs(60);

fn unavailable(e: RedisStoreError) -> SpoolError {
    SpoolError::Unavailable(e.to_string())
}

/// A stream id (`<ms>-<seq>`) as numbers: its order, and whether `id` is one
/// at all (a foreign id is never sent to Redis, whose error would be a 500).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Whether `new` reaches the same data as `old`: the same server (host and
/// port, or socket path), database and `key_prefix`. Unreadable URLs never do
/// (the loader has parsed both, so that is only a safeguard).
pub fn same_data(old: &RedisSettings, new: &RedisSettings) -> bool {
    let place = |url: &str| {
        redis::IntoConnectionInfo::into_connection_info(url)
            .ok()
            .map(|i| (i.addr().to_string(), i.redis_settings().db()))
    };
    old.key_prefix == new.key_prefix && place(&old.url).is_some_and(|a| Some(a) == place(&new.url))
}

/// This process's consumer name: readable in `XINFO CONSUMERS` (the host and
/// pid) and unique (random), so two spools never share a pending list, not
/// even two in one process (a reload) or a restarted container with the same
/// hostname and pid.
fn consumer_name() -> String {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    let random: u64 = rand::random();
    if host.is_empty() {
        format!("pg-{}-{random:016x}", std::process::id())
    } else {
        format!("pg-{host}-{}-{random:016x}", std::process::id())
    }
}

/// The shared spool (see the module documentation).
pub struct RedisSpool {
    /// The client every call uses; a reload may put a new one in its place
    /// ([`RedisSpool::follow`]).
    inner: ArcSwap<Inner>,
    prefix: String,
    consumer: String,
    max_bytes: u64,
    key: Option<SpoolKey>,
    /// Where the spool's entries are: the URL it opened (its server and
    /// database) and `prefix`, for [`RedisSpool::follow`] to compare with.
    origin: RedisSettings,
    /// Routes this spool has read through the group (so it is a consumer of
    /// their streams), for [`SpoolStore::close`] to leave.
    routes: Mutex<HashSet<String>>,
    /// Entries found undecodable, by route: (a dead letter, id). Each is
    /// logged once, when first found.
    unreadable: Mutex<HashMap<String, BTreeSet<(bool, String)>>>,
    /// Drives the connection and every call; shut down in the background on
    /// close or drop (as the replay store's).
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for RedisSpool {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl std::fmt::Debug for RedisSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSpool")
            .field("prefix", &self.prefix)
            .field("consumer", &self.consumer)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl RedisSpool {
    /// The spool `settings` describe, holding at most `max_bytes` (every
    /// route, live and dead, every replica), records sealed with `key`.
    ///
    /// Connects lazily, like the replay store: on the first call, and again
    /// after failures, each attempt bounded by `settings.timeout`. A Redis
    /// that is down at start-up is therefore not an error here but
    /// [`SpoolError::Unavailable`] from the calls (readiness asks the replay
    /// store, which uses the same Redis); only a URL that cannot be parsed or
    /// a runtime that cannot start fails now.
    pub fn new(
        settings: &RedisSettings,
        max_bytes: u64,
        key: Option<SpoolKey>,
    ) -> Result<RedisSpool, SpoolError> {
        Self::open(
            &settings.url,
            settings.password.as_ref().map(|p| p.expose()),
            &settings.key_prefix,
            settings.timeout,
            max_bytes,
            key,
        )
    }

    fn open(
        url: &str,
        password: Option<&[u8]>,
        prefix: &str,
        timeout: Duration,
        max_bytes: u64,
        key: Option<SpoolKey>,
    ) -> Result<RedisSpool, SpoolError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-spool")
            .enable_all()
            .build()
            .map_err(|e| SpoolError::Unavailable(format!("cannot start the redis client: {e}")))?;
        let inner = Inner::connect(url, password, timeout, &runtime).map_err(unavailable)?;
        let origin = RedisSettings {
            url: url.to_string(),
            password: None,
            key_prefix: prefix.to_string(),
            timeout,
        };
        Ok(RedisSpool {
            inner: ArcSwap::from_pointee(inner),
            origin,
            prefix: prefix.to_string(),
            consumer: consumer_name(),
            max_bytes,
            key,
            routes: Mutex::new(HashSet::new()),
            unreadable: Mutex::new(HashMap::new()),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Follows a reload's Redis settings `new`: a new client on the spool's
    /// runtime serves every later call, and calls under way finish on the old
    /// one. Only credentials, TLS and `redis_timeout` may change: `Ok(false)`,
    /// nothing done, when `new` names another server, database or
    /// `key_prefix` than the spool opened, where none of its entries are (that
    /// takes a restart, however many reloads came in between).
    pub fn follow(&self, new: &RedisSettings) -> Result<bool, SpoolError> {
        if !same_data(&self.origin, new) {
            return Ok(false);
        }
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(runtime) = runtime.as_ref() else {
            return Err(SpoolError::Unavailable("the spool is closed".into()));
        };
        let password = new.password.as_ref().map(|p| p.expose());
        let inner =
            Inner::connect(&new.url, password, new.timeout, runtime).map_err(unavailable)?;
        self.inner.store(Arc::new(inner));
        Ok(true)
    }

    /// This spool's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// `<prefix><kind>:<escaped route>`, escaped by the replay store's
    /// [`keys::key`] (its key with an empty event id, without the `:` that
    /// would separate it).
    fn route_key(&self, kind: &str, route: &str) -> Vec<u8> {
        let mut k = keys::key(&format!("{}{kind}:", self.prefix), route.as_bytes(), "");
        k.pop();
        k
    }

    fn live(&self, route: &str) -> Vec<u8> {
        self.route_key("spool", route)
    }

    fn dead_key(&self, route: &str) -> Vec<u8> {
        self.route_key("spool-dead", route)
    }

    fn bytes_key(&self) -> Vec<u8> {
        format!("{}spool-bytes", self.prefix).into_bytes()
    }

    /// Runs `script` with `keys` and `args` on the spool's runtime, bounded
    /// and retried once on a dropped connection (see the module documentation).
    async fn eval<T>(
        &self,
        script: &Script,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<T, SpoolError>
    where
        T: FromRedisValue + Send + 'static,
    {
        let script = script.clone();
        self.inner
            .load_full()
            .on_runtime(move |inner| async move { inner.eval(&script, &keys, &args).await })
            .await
            .map_err(unavailable)
    }

    /// Decodes `(id, r)` pairs of `route`'s live stream (or its dead
    /// letters, `dead`), oldest first; an entry that does not decode (a bad
    /// key, a corrupted or foreign value) is skipped and never deleted (an
    /// operator may still recover it with the right key), counted, and
    /// logged by id the first time this spool finds it.
    fn entries(&self, route: &str, dead: bool, raw: Vec<(String, Option<Vec<u8>>)>) -> Vec<Entry> {
        let mut bad = Vec::new();
        let mut out: Vec<Entry> = raw
            .into_iter()
            .filter_map(|(id, bytes)| {
                match bytes.as_deref().map(|b| decode(b, self.key.as_ref())) {
                    Some(Ok(record)) => Some(Entry { id, record }),
                    Some(Err(e)) => {
                        bad.push((id, e.to_string()));
                        None
                    }
                    None => {
                        bad.push((id, "no record field".to_string()));
                        None
                    }
                }
            })
            .collect();
        if !bad.is_empty() {
            let mut seen = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
            let seen = seen.entry(route.to_string()).or_default();
            for (id, reason) in bad {
                if seen.insert((dead, id.clone())) {
                    tracing::warn!(
                        route,
                        id = id.as_str(),
                        dead,
                        reason = reason.as_str(),
                        "a spooled entry does not decode; left in redis, skipped (counted in GET /spool as unreadable)"
                    );
                }
            }
        }
        out.sort_by_key(|e| parse_id(&e.id).unwrap_or((u64::MAX, u64::MAX)));
        out
    }

    /// The entries of `route` found undecodable: (live, dead).
    fn unreadable_of(&self, route: &str) -> Vec<(bool, String)> {
        self.unreadable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets undecodable entries of `route` that are no longer there.
    fn forget_unreadable(&self, route: &str, gone: &[(bool, String)]) {
        if gone.is_empty() {
            return;
        }
        let mut seen = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get_mut(route) {
            for g in gone {
                s.remove(g);
            }
        }
    }

    /// Stops the runtime, and with it the connection and every task on it.
    fn shut_down(&self) {
        conn::shut_down(&self.runtime);
    }
}
