//! A route's JWKS: fetched at start, refreshed every `jwks_refresh` and on
//! an unknown `kid` (at most once a minute; the fetch at start does not
//! count), the last good set kept when a fetch fails (see [`super`]).
//!
//! The fetching itself is the caller's ([`Fetch`]: the project's HTTP
//! client); this file holds the set, decides when to fetch, and counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::jwt::{self, Key};

/// The least time between two fetches that an unknown `kid` triggers.
pub const KID_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// While no set was ever fetched: the first retry after a failure; the wait
/// doubles up to [`FIRST_FETCH_MAX_WAIT`].
pub(super) const FIRST_FETCH_WAIT: Duration = Duration::from_millis(250);
pub(super) const FIRST_FETCH_MAX_WAIT: Duration = Duration::from_secs(30);

/// After a failed scheduled refresh, the next try comes after this long (or
/// `jwks_refresh`, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Fetches a JWKS document: the body of a 2xx answer, or why not (a short
/// description that never holds the document).
#[async_trait::async_trait]
pub trait Fetch: Send + Sync {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String>;
}

/// The outcome of one fetch, as `persona_guard_jwks_refreshes_total{result}`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    Ok,
    Error,
}

impl Refreshed {
    pub fn label(self) -> &'static str {
        match self {
            Refreshed::Ok => "ok",
            Refreshed::Error => "error",
        }
    }
}

/// Told of every fetch: the route's path and the result.
pub type OnRefresh = Arc<dyn Fn(&str, Refreshed) + Send + Sync>;

/// The keys in use and when they were fetched.
pub struct Set {
    pub keys: Vec<Key>,
    /// Unix seconds.
    pub fetched_at: u64,
}

/// One route's JWKS.
pub struct Jwks {
    route: String,
    url: String,
    refresh: Duration,
    fetcher: Arc<dyn Fetch>,
    on_refresh: OnRefresh,
    set: ArcSwapOption<Set>,
    /// When an unknown `kid` last fetched (in ms since `born`), `u64::MAX`
    /// before the first; guarded by `fetching` for the decision.
    kid_fetched_ms: AtomicU64,
    born: Instant,
    /// Whether the last scheduled refresh failed (the next comes sooner).
    failing: std::sync::atomic::AtomicBool,
    /// One fetch at a time: requests meeting the same unknown `kid` wait for
    /// one fetch and then look again.
    fetching: Mutex<()>,
}

impl Jwks {
    pub fn new(
        route: &str,
        url: &str,
        refresh: Duration,
        fetcher: Arc<dyn Fetch>,
        on_refresh: OnRefresh,
    ) -> Arc<Jwks> {
        Arc::new(Jwks {
            route: route.into(),
            url: url.into(),
            refresh,
            fetcher,
            on_refresh,
            set: ArcSwapOption::empty(),
            kid_fetched_ms: AtomicU64::new(u64::MAX),
            born: Instant::now(),
            failing: std::sync::atomic::AtomicBool::new(false),
            fetching: Mutex::new(()),
        })
    }

    /// The set in use, if one was ever fetched.
    pub fn current(&self) -> Option<Arc<Set>> {
        self.set.load_full()
    }

    /// Whether a set was fetched: readiness waits for this.
    pub fn is_ready(&self) -> bool {
        self.set.load().is_some()
    }

    /// Seconds since the set in use was fetched.
    pub fn age_seconds(&self) -> Option<u64> {
        self.set
            .load()
            .as_ref()
            .map(|s| unix_now().saturating_sub(s.fetched_at))
    }

    /// Fetches the set once; keeps the last good one on failure. Logs, and
    /// counts through `on_refresh`.
    pub async fn refresh(&self) -> Refreshed {
        let result = match self.fetcher.fetch(&self.url).await {
            Ok(body) => jwt::keys_of(&body).map_err(str::to_string),
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok((keys, skipped)) => {
                if skipped > 0 {
                    tracing::warn!(
                        route = self.route.as_str(),
                        skipped,
                        "JWKS: keys that cannot verify a token (symmetric, for encryption, or of an unsupported kind) were left out"
                    );
                }
                if keys.is_empty() {
                    tracing::warn!(
                        route = self.route.as_str(),
                        "JWKS: the document holds no usable key"
                    );
                }
                let first = self.set.load().is_none();
                self.set.store(Some(Arc::new(Set {
                    keys,
                    fetched_at: unix_now(),
                })));
                if first {
                    tracing::info!(route = self.route.as_str(), "JWKS fetched");
                }
                Refreshed::Ok
            }
            Err(e) => {
                let kept = self.set.load().is_some();
                tracing::warn!(
                    route = self.route.as_str(),
                    error = e.as_str(),
                    keeping_last_good = kept,
                    "JWKS: cannot fetch the issuer's keys"
                );
                Refreshed::Error
            }
        };
        (self.on_refresh)(&self.route, outcome);
        outcome
    }

    /// Fetches again for a `kid` the set does not hold, unless one such
    /// fetch happened less than [`KID_REFRESH_EVERY`] ago. Concurrent
    /// callers share one fetch. Whether the set may have changed.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let asked = self.elapsed_ms();
        let _one = self.fetching.lock().await;
        let last = self.kid_fetched_ms.load(Ordering::SeqCst);
        if last != u64::MAX && last >= asked {
            // Another request fetched while this one waited.
            return true;
        }
        if last != u64::MAX
            && self.elapsed_ms().saturating_sub(last) < KID_REFRESH_EVERY.as_millis() as u64
        {
            return false;
        }
        self.kid_fetched_ms
            .store(self.elapsed_ms(), Ordering::SeqCst);
        self.refresh().await == Refreshed::Ok
    }

    fn elapsed_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// How long until the next scheduled refresh: `jwks_refresh`, or
    /// within a minute after a failed one.
    pub fn next_refresh(&self) -> Duration {
        match self.failing.load(Ordering::SeqCst) {
            true => self.refresh.min(RETRY_AFTER_FAILURE),
            false => self.refresh,
        }
    }

    /// A refresh on the schedule (see [`Jwks::next_refresh`]).
    pub async fn scheduled_refresh(&self) {
        let failed = self.refresh().await == Refreshed::Error;
        self.failing.store(failed, Ordering::SeqCst);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
