//! One run over one route: list Persona's events newest first, judge each
//! against the replay store (and the spool's dead letters), and return the
//! missing ones. Reporting and backfilling them is the caller's.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::api::{Api, ApiError, Listed};
use crate::config::Route;
use crate::replay::{Mark, ReplayStore};

/// At most this many pages per run (100 events each).
pub const MAX_PAGES: usize = 300;

/// What a run judges against, besides the listing.
pub struct Scope<'a> {
    pub route: &'a Route,
    pub store: Arc<dyn ReplayStore>,
    /// Event ids the route's spool holds as dead letters (not missing:
    /// an operator decides).
    pub dead: HashSet<String>,
    /// The webhook's enabled events (`webhook_id`), when set.
    pub webhook_events: Option<HashSet<String>>,
    pub now_ms: u64,
    /// How far back (`window`, or `--since`).
    pub window: Duration,
    pub grace: Duration,
    /// The memory store's start: older events are not judged.
    pub since_ms: Option<u64>,
    pub max_pages: usize,
    /// Keep each missing event's object (backfill); a report keeps only
    /// its id, type and created-at, so a long listing stays small.
    pub keep_objects: bool,
}

/// A missing event.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub event: Listed,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Found {
    /// Events listed (every page read).
    pub seen: u64,
    /// Events judged (old enough, in the window, accepted by the route).
    pub judged: u64,
    pub missing: Vec<Missing>,
    /// Set when the run stopped early; what was found until then stands.
    pub error: Option<ApiError>,
    /// Why the replay store could not be read (the run then judged nothing more).
    pub store_error: Option<String>,
    /// No request to the API before this (a 429, or the budget spent).
    pub resume_at_ms: Option<u64>,
    pub pages: usize,
}

impl Scope<'_> {
    /// Whether `e` is judged at all; `Err(true)` for an event older than the
    /// window (the listing is newest first: the run can stop there).
    fn judged(&self, e: &Listed) -> Result<(), bool> {
        let Some(created) = e.created_ms else {
            return Err(false);
        };
        let window_start = self.now_ms.saturating_sub(self.window.as_millis() as u64);
        if created < window_start {
            return Err(true);
        }
        let grace_end = self.now_ms.saturating_sub(self.grace.as_millis() as u64);
        let accepted = self.route.allows(&e.name)
            && self
                .webhook_events
                .as_ref()
                .is_none_or(|w| w.contains(&e.name));
        let remembered = self.since_ms.is_none_or(|s| created > s);
        if created > grace_end || !accepted || !remembered {
            return Err(false);
        }
        Ok(())
    }
}

/// Lists and judges (see the module documentation). `api` is called
/// through `spawn_blocking`.
pub async fn find_missing(api: &Arc<Api>, scope: &Scope<'_>) -> Found {
    let mut found = Found::default();
    let mut url = Some(api.first_page());
    while let Some(at) = url.take() {
        if found.pages >= scope.max_pages {
            break;
        }
        let (a, now) = (api.clone(), crate::spool::now_ms());
        let page = match tokio::task::spawn_blocking(move || a.page(&at, now)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                if let ApiError::RateLimited { resume_at_ms } = e {
                    found.resume_at_ms = Some(resume_at_ms);
                }
                found.error = Some(e);
                break;
            }
            Err(_) => {
                found.error = Some(ApiError::Transport("the request's task failed".into()));
                break;
            }
        };
        found.pages += 1;
        found.seen += page.events.len() as u64;
        let mut older = false;
        let mut candidates = Vec::new();
        for e in page.events {
            match scope.judged(&e) {
                Ok(()) => candidates.push(e),
                Err(past_window) => older |= past_window,
            }
        }
        found.judged += candidates.len() as u64;
        if let Err(e) = judge(scope, candidates, &mut found.missing).await {
            found.store_error = Some(e);
            break;
        }
        if let Some(until) = page.exhausted_until_ms
            && page.next.is_some()
            && !older
        {
            found.resume_at_ms = Some(until);
            found.error = Some(ApiError::RateLimited {
                resume_at_ms: until,
            });
            break;
        }
        if !older {
            url = page.next;
        }
    }
    found
}

/// Adds the `candidates` that the store holds nothing for, and that are not
/// dead letters, to `missing` (one read of the store for the page).
async fn judge(
    scope: &Scope<'_>,
    candidates: Vec<Listed>,
    missing: &mut Vec<Missing>,
) -> Result<(), String> {
    if candidates.is_empty() {
        return Ok(());
    }
    let keys: Vec<_> = candidates
        .iter()
        .map(|e| scope.store.key(&scope.route.normalized, &e.id))
        .collect();
    let marks = scope.store.peek(&keys).await.map_err(|e| e.to_string())?;
    for (e, mark) in candidates.into_iter().zip(marks) {
        if mark == Mark::Absent && !scope.dead.contains(&e.id) {
            let mut event = e;
            if !scope.keep_objects {
                event.object = serde_json::Value::Null;
            }
            missing.push(Missing { event });
        }
    }
    Ok(())
}
