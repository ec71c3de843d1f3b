//! The Redis spool's [`SpoolStore`] calls (see [`super`]).

use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

use super::{GROUP, PUT_MARK_TTL, RedisSpool, parse_id, scripts, unavailable};
use crate::config::RedisSettings;
use crate::replay::redis::conn::millis;
use crate::spool::codec::{decode, encode};
use crate::spool::{Entry, EntryId, Record, RouteStats, SpoolError, SpoolStore};

#[async_trait]
impl SpoolStore for RedisSpool {
    fn follow_redis(&self, new: &RedisSettings) -> Result<bool, SpoolError> {
        self.follow(new)
    }

    async fn put(&self, record: &Record) -> Result<EntryId, SpoolError> {
        let bytes = encode(record, self.key.as_ref());
        let nonce: u128 = rand::random();
        let mark = format!("{}spool-put:{nonce:032x}", self.prefix).into_bytes();
        let (stored, id): (i64, String) = self
            .eval(
                &scripts::PUT,
                vec![self.live(&record.route), self.bytes_key(), mark],
                vec![
                    bytes,
                    record.size().to_string().into_bytes(),
                    self.max_bytes.to_string().into_bytes(),
                    millis(PUT_MARK_TTL).to_string().into_bytes(),
                ],
            )
            .await?;
        if stored == 1 {
            Ok(id)
        } else {
            Err(SpoolError::Full)
        }
    }

    /// `XAUTOCLAIM` considers this consumer's own entries too: one this
    /// spool handed out and did not [`SpoolStore::keep`] for `min_idle` is
    /// handed out again (here or to another replica). Keeping is what holds an
    /// entry. One `XAUTOCLAIM` call scans a bounded part of the group's
    /// pending list (Redis looks at up to ten times `max` entries); the next
    /// take goes on from the start, which is fine for a spool's short lists.
    async fn take(
        &self,
        route: &str,
        max: usize,
        min_idle: Duration,
    ) -> Result<Vec<Entry>, SpoolError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(route.to_string());
        let raw: Vec<(String, Option<Vec<u8>>)> = self
            .eval(
                &scripts::TAKE,
                vec![self.live(route)],
                vec![
                    GROUP.into(),
                    self.consumer.clone().into_bytes(),
                    millis(min_idle).to_string().into_bytes(),
                    max.to_string().into_bytes(),
                ],
            )
            .await?;
        Ok(self.entries(route, false, raw))
    }

    /// `XCLAIM` with idle 0: note that it claims the entries even if another
    /// replica took them over meanwhile (this one was silent for longer than
    /// `min_idle`); both may then deliver, and the replay lease decides which.
    async fn keep(&self, route: &str, ids: &[EntryId]) -> Result<(), SpoolError> {
        let ids: Vec<String> = ids
            .iter()
            .filter(|id| parse_id(id).is_some())
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(self.live(route))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids)
            .arg("JUSTID");
        self.inner
            .load_full()
            .on_runtime(move |inner| async move {
                let cmd = &cmd;
                inner
                    .bounded(async {
                        match inner
                            .retrying(
                                || true,
                                |mut con| async move { cmd.query_async::<Value>(&mut con).await },
                            )
                            .await
                        {
                            // The stream or group is gone (Redis lost its data):
                            // nothing is held, nothing to keep.
                            Err(e) if e.code() == Some("NOGROUP") => Ok(()),
                            other => other.map(|_| ()),
                        }
                    })
                    .await
            })
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, route: &str, id: &EntryId) -> Result<(), SpoolError> {
        if parse_id(id).is_none() {
            return Ok(());
        }
        let _: i64 = self
            .eval(
                &scripts::REMOVE,
                vec![self.live(route), self.bytes_key()],
                vec![GROUP.into(), id.clone().into_bytes()],
            )
            .await?;
        Ok(())
    }

    /// An entry no longer live (removed, buried already) is a no-op, so a
    /// retried bury is harmless. The dead letter gets a new id (its burial
    /// time): dead letters are listed in the order they died.
    async fn bury(&self, route: &str, id: &EntryId) -> Result<(), SpoolError> {
        if parse_id(id).is_none() {
            return Ok(());
        }
        let _: i64 = self
            .eval(
                &scripts::BURY,
                vec![self.live(route), self.dead_key(route)],
                vec![GROUP.into(), id.clone().into_bytes()],
            )
            .await?;
        Ok(())
    }

    async fn dead(&self, route: &str) -> Result<Vec<Entry>, SpoolError> {
        let raw: Vec<(String, Option<Vec<u8>>)> = self
            .eval(
                &scripts::RANGE,
                vec![self.dead_key(route)],
                vec![b"-".to_vec(), b"+".to_vec()],
            )
            .await?;
        Ok(self.entries(route, true, raw))
    }

    async fn revive(&self, route: &str, id: &EntryId, now_ms: u64) -> Result<EntryId, SpoolError> {
        if parse_id(id).is_none() {
            return Err(SpoolError::NotFound);
        }
        let raw: Vec<(String, Option<Vec<u8>>)> = self
            .eval(
                &scripts::RANGE,
                vec![self.dead_key(route)],
                vec![id.clone().into_bytes(), id.clone().into_bytes()],
            )
            .await?;
        let Some((_, Some(bytes))) = raw.into_iter().next() else {
            return Err(SpoolError::NotFound);
        };
        let mut record = decode(&bytes, self.key.as_ref()).map_err(|_| {
            tracing::warn!(route, id = id.as_str(), "a dead letter does not decode");
            SpoolError::Unavailable("the dead letter does not decode".into())
        })?;
        record.live_since_ms = now_ms;
        let new: Option<String> = self
            .eval(
                &scripts::REVIVE,
                vec![self.live(route), self.dead_key(route), self.bytes_key()],
                vec![
                    id.clone().into_bytes(),
                    encode(&record, self.key.as_ref()),
                    record.size().to_string().into_bytes(),
                ],
            )
            .await?;
        new.ok_or(SpoolError::NotFound)
    }

    async fn delete_dead(&self, route: &str, id: &EntryId) -> Result<(), SpoolError> {
        if parse_id(id).is_none() {
            return Err(SpoolError::NotFound);
        }
        let deleted: i64 = self
            .eval(
                &scripts::DELETE_DEAD,
                vec![self.dead_key(route), self.bytes_key()],
                vec![id.clone().into_bytes()],
            )
            .await?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(SpoolError::NotFound)
        }
    }

    /// One read-only script: two `XLEN`s, a `GET` and the first live entry.
    /// `bytes` is the deployment's counter (every route), as `max_bytes` is.
    async fn stats(&self, route: &str) -> Result<RouteStats, SpoolError> {
        let (depth, dead, bytes, first): (u64, u64, Option<i64>, Option<Vec<u8>>) = self
            .eval(
                &scripts::STATS,
                vec![self.live(route), self.dead_key(route), self.bytes_key()],
                vec![],
            )
            .await?;
        // Logged once by id where it was found (take, dead); not on every scrape.
        let oldest_live_ms =
            first.and_then(|b| decode(&b, self.key.as_ref()).ok().map(|r| r.live_since_ms));
        let known = self.unreadable_of(route);
        let mut present = Vec::new();
        let mut gone = Vec::new();
        if !known.is_empty() {
            let args: Vec<Vec<u8>> = known
                .iter()
                .flat_map(|(is_dead, id)| {
                    [
                        if *is_dead {
                            b"d".to_vec()
                        } else {
                            b"l".to_vec()
                        },
                        id.clone().into_bytes(),
                    ]
                })
                .collect();
            let there: Vec<i64> = self
                .eval(
                    &scripts::PRESENT,
                    vec![self.live(route), self.dead_key(route)],
                    args,
                )
                .await?;
            for ((is_dead, id), n) in known.into_iter().zip(there) {
                if n > 0 {
                    present.push(is_dead);
                } else {
                    gone.push((is_dead, id));
                }
            }
        }
        self.forget_unreadable(route, &gone);
        let bad_dead = present.iter().filter(|d| **d).count() as u64;
        let bad_live = present.len() as u64 - bad_dead;
        Ok(RouteStats {
            depth: depth.saturating_sub(bad_live),
            oldest_live_ms,
            dead: dead.saturating_sub(bad_dead),
            bytes: bytes.unwrap_or(0).max(0) as u64,
            unreadable: present.len() as u64,
        })
    }

    /// Leaves the group of every route this spool read, where it holds no
    /// entry any more (best effort, bounded by `timeout` in all), so replicas
    /// that come and go do not pile up consumers in `XINFO CONSUMERS`; a
    /// consumer that still holds entries stays, and other replicas take its
    /// entries over after `min_idle`. Then stops the runtime and the connection.
    async fn close(&self) {
        let routes: Vec<String> = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain()
            .collect();
        let leave = async {
            for route in routes {
                let left: Result<i64, _> = self
                    .eval(
                        &scripts::FORGET,
                        vec![self.live(&route)],
                        vec![GROUP.into(), self.consumer.clone().into_bytes()],
                    )
                    .await;
                if let Err(e) = left {
                    tracing::debug!(route, error = %e, "could not leave the spool's consumer group");
                }
            }
        };
        let _ = tokio::time::timeout(self.inner.load().timeout, leave).await;
        self.shut_down();
    }
}
