//! The key sets of every OAuth route, kept across reloads: a reload that
//! leaves a route's `jwks_url` and `jwks_refresh` alone keeps its set (no
//! refetch, no unreadiness); a changed one starts a new set. Each set is
//! fetched and refreshed by a task on a runtime and thread of the keyring's
//! own (started with the first set), never on the request path; a set no
//! route uses any more stops at its next wake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::OAuthRule;
use super::jwks::{Fetch, Jwks, OnRefresh};

/// A set is known by its route, URL and refresh period.
type SetKey = (String, String, Duration);

pub struct Keyring {
    fetcher: Arc<dyn Fetch>,
    on_refresh: OnRefresh,
    sets: Mutex<HashMap<SetKey, Arc<Jwks>>>,
    runtime: OnceLock<Option<tokio::runtime::Handle>>,
}

impl Keyring {
    pub fn new(fetcher: Arc<dyn Fetch>, on_refresh: OnRefresh) -> Keyring {
        Keyring {
            fetcher,
            on_refresh,
            sets: Mutex::new(HashMap::new()),
            runtime: OnceLock::new(),
        }
    }

    /// The key set of `route` under `rule`: the running one when the rule's
    /// URL and refresh are unchanged, else a new one, fetched from now on.
    pub fn set_for(&self, route: &str, rule: &OAuthRule) -> Arc<Jwks> {
        let key = (route.to_string(), rule.jwks_url.clone(), rule.jwks_refresh);
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get(&key) {
            return set.clone();
        }
        let set = Jwks::new(
            route,
            &rule.jwks_url,
            rule.jwks_refresh,
            self.fetcher.clone(),
            self.on_refresh.clone(),
        );
        match self.runtime() {
            Some(rt) => {
                rt.spawn(run(Arc::downgrade(&set)));
            }
            None => tracing::error!(
                route,
                "cannot start the JWKS runtime: the route's tokens cannot be verified"
            ),
        }
        sets.insert(key, set.clone());
        set
    }

    /// Forgets every set but `used` (after a reload compiled its routes).
    pub fn keep_only(&self, used: &[Arc<Jwks>]) {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.retain(|_, s| used.iter().any(|u| Arc::ptr_eq(u, s)));
    }

    fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime
            .get_or_init(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                let handle = rt.handle().clone();
                std::thread::Builder::new()
                    .name("jwks".into())
                    .spawn(move || rt.block_on(std::future::pending::<()>()))
                    .ok()?;
                Some(handle)
            })
            .as_ref()
    }
}

/// Fetches the set until the first success, then refreshes it on its
/// schedule, for as long as a route uses it.
pub(crate) async fn run(set: Weak<Jwks>) {
    let mut wait = super::jwks::FIRST_FETCH_WAIT;
    loop {
        let Some(s) = set.upgrade() else { return };
        if s.is_ready() || s.refresh().await == super::jwks::Refreshed::Ok {
            break;
        }
        drop(s);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(super::jwks::FIRST_FETCH_MAX_WAIT);
    }
    loop {
        let Some(next) = set.upgrade().map(|s| s.next_refresh()) else {
            return;
        };
        tokio::time::sleep(next).await;
        let Some(s) = set.upgrade() else { return };
        s.scheduled_refresh().await;
    }
}

/// The key sets' fetcher: a `GET` through the project's one HTTP client
/// ([`crate::outbound`]), on the blocking pool.
pub struct OutboundFetch(pub crate::outbound::Client);

#[async_trait::async_trait]
impl Fetch for OutboundFetch {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let (client, url) = (self.0.clone(), url.to_string());
        tokio::task::spawn_blocking(move || crate::outbound::get(&client, &url))
            .await
            .unwrap_or_else(|_| Err("the fetch did not finish".into()))
    }
}
