//! A claim that outlives its caller (see "A claim that timed out" in the
//! parent module): it runs as a task on the store's runtime, keeps waiting for
//! Redis's answer after the caller gave up, and releases a mark that nobody
//! will settle.

use std::sync::Arc;
use std::time::Duration;

use redis::ErrorKind;
use tokio::sync::oneshot;

use super::conn::{Inner, RedisStoreError, describe};
use crate::replay::Claim;

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

/// Claims `key` with `token` for one delivery (at most `inflight_ttl` unless
/// renewed), bounded by the store's `timeout` for the caller; the claim itself
/// goes on in a task that settles it if the caller is gone.
pub(super) async fn claim(
    inner: &Arc<Inner>,
    key: Vec<u8>,
    token: u64,
    inflight_ttl: Duration,
) -> Result<Claim, RedisStoreError> {
    let (tx, rx) = oneshot::channel();
    inner
        .handle
        .spawn(run(inner.clone(), key, token, inflight_ttl, tx));
    match tokio::time::timeout(inner.timeout, rx).await {
        Err(_) => Err(RedisStoreError::Timeout(inner.timeout)),
        Ok(Err(_)) => Err(RedisStoreError::stopped()),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Ok(Ok(Answer::Mine(claim)))) => Ok(Claim::Claimed(claim.adopt())),
        Ok(Ok(Ok(Answer::Theirs(c)))) => Ok(c),
    }
}

/// The claim task: runs the script (waiting up to `inflight_ttl` for a late
/// answer) and sends the answer to a caller that may be gone.
async fn run(
    inner: Arc<Inner>,
    key: Vec<u8>,
    token: u64,
    inflight_ttl: Duration,
    tx: oneshot::Sender<Result<Answer, RedisStoreError>>,
) {
    // Past `inflight_ttl` any mark this claim made has expired by itself.
    let late_window = inflight_ttl.max(inner.timeout);
    let attempts = inner.claim_script(&key, token, inflight_ttl, || !tx.is_closed());
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
}
