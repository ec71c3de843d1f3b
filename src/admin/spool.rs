//! The admin listener's spool endpoints (see [`super`]): the listing, one
//! route's dead letters a page at a time, retry and delete, and the spool
//! gauges set at scrape.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{Admin, json, query_param};
use crate::config::SpoolMode;
use crate::spool::{Entry, Handle};

/// Why a `/spool` request cannot be served.
enum SpoolRefusal {
    /// No route spools: the process has no spool.
    NoSpool,
    /// The spool failed (its message names no secret and quotes no body).
    Unavailable(String),
}

impl SpoolRefusal {
    fn response(self) -> Response<Vec<u8>> {
        match self {
            SpoolRefusal::NoSpool => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "no_spool", "message": "No route spools (spool = \"on_failure\" or \"always\")."}),
            ),
            SpoolRefusal::Unavailable(message) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "spool_unavailable", "message": message}),
            ),
        }
    }
}

impl From<crate::spool::SpoolError> for SpoolRefusal {
    fn from(e: crate::spool::SpoolError) -> Self {
        SpoolRefusal::Unavailable(e.to_string())
    }
}

/// The process's spool and every configured route (by path), with whether
/// it spools now (a route a reload turned off may still hold entries).
type Spooling<'a> = (&'a Arc<Handle>, Vec<(String, bool)>);

/// Dead letters matching a query, with their routes.
type Matching<'a> = (&'a Arc<Handle>, Vec<(String, Entry)>);

/// How many dead letters `GET /spool` lists per route (all are counted).
pub const DEAD_LISTED: usize = 100;

/// The most dead letters one `GET /spool/dead` page lists.
const PAGE_MAX: usize = 1000;

/// Why a stale dead letter is not retried without `force=true`.
const STALE_MESSAGE: &str = "These dead letters were first spooled longer than replay.ttl ago, or before this process's memory replay store started (it forgets on a restart): the mark that shows an event delivered may have expired or been forgotten since, so Persona may already have delivered the event again, and a retry could deliver it twice. Retry with force=true to send them anyway.";

/// Whether `e` is *stale*: first spooled longer than `ttl` before `now_ms`
/// (its event's *delivered* mark may have expired), or before
/// `remembers_since_ms`, the start of a replay store that forgets on a
/// restart (the memory store: a delivery made since, by Persona's dashboard
/// retry in an earlier process, is unknown to it).
fn is_stale(
    e: &Entry,
    ttl: std::time::Duration,
    now_ms: u64,
    remembers_since_ms: Option<u64>,
) -> bool {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let spooled = e.record.spooled_at_ms;
    now_ms.saturating_sub(spooled) > ttl_ms
        || remembers_since_ms.is_some_and(|since| spooled < since)
}

/// One dead letter as the admin endpoints list it (no body, no head).
fn dead_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "event_id": e.record.event_id,
        "event_type": e.record.event_type,
        "spooled_at": rfc3339(e.record.spooled_at_ms),
        "age_seconds": age_seconds(e.record.live_since_ms),
    })
}

/// The `after` of the page that follows the first `shown` of `dead`, if
/// any dead letter is left after them.
fn next_after(dead: &[Entry], shown: usize) -> Option<&str> {
    (dead.len() > shown).then(|| dead[shown - 1].id.as_str())
}

fn bad_request(error: &str, message: &str) -> Response<Vec<u8>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": error, "message": message}),
    )
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn age_seconds(ms: u64) -> u64 {
    crate::spool::now_ms().saturating_sub(ms) / 1000
}

impl Admin {
    /// The spool and the routes that spool, or the answer saying there is none.
    fn spool(&self) -> Result<Spooling<'_>, SpoolRefusal> {
        let Some(spool) = self.shared.spool.get() else {
            return Err(SpoolRefusal::NoSpool);
        };
        let policy = self.shared.policy.load();
        let routes = policy
            .config
            .policy
            .routes
            .iter()
            .map(|r| (r.path.clone(), r.spool != SpoolMode::Off))
            .collect();
        Ok((spool, routes))
    }

    pub(super) async fn spool_list(&self) -> Response<Vec<u8>> {
        match self.spool_listing().await {
            Ok(v) => json(StatusCode::OK, v),
            Err(r) => r.response(),
        }
    }

    async fn spool_listing(&self) -> Result<serde_json::Value, SpoolRefusal> {
        let (spool, routes) = self.spool()?;
        let mut out = Vec::new();
        for (route, spooling) in routes {
            let stats = spool.store.stats(&route).await?;
            if !spooling && stats.depth == 0 && stats.dead == 0 && stats.unreadable == 0 {
                continue;
            }
            let dead = spool.store.dead(&route).await?;
            let listed: Vec<_> = dead.iter().take(DEAD_LISTED).map(dead_json).collect();
            out.push(serde_json::json!({
                "route": route,
                "depth": stats.depth,
                "oldest_age_seconds": stats.oldest_live_ms.map_or(0, age_seconds),
                "bytes": stats.bytes,
                "dead_letters": stats.dead,
                "unreadable": stats.unreadable,
                "dead": listed,
                "dead_next": next_after(&dead, DEAD_LISTED),
            }));
        }
        Ok(serde_json::json!({ "routes": out }))
    }

    /// `GET /spool/dead?route=<path>[&after=<entry id>][&limit=<n>]`: one
    /// route's dead letters, oldest first, `limit` of them (default
    /// [`DEAD_LISTED`], at most 1,000) after the entry `after`. `next` is the
    /// `after` of the following page, `null` on the last one.
    pub(super) async fn spool_dead_page(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(route) = query_param(query, "route") else {
            return bad_request(
                "missing_route",
                "GET /spool/dead needs ?route=<route path>.",
            );
        };
        let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
            None => DEAD_LISTED,
            Some(Ok(n)) if (1..=PAGE_MAX).contains(&n) => n,
            Some(_) => return bad_request("bad_limit", "limit is a number from 1 to 1000."),
        };
        let (spool, routes) = match self.spool() {
            Ok(s) => s,
            Err(r) => return r.response(),
        };
        if !routes.iter().any(|(r, _)| *r == route) {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "unknown_route", "message": "No configured route has that path."}),
            );
        }
        let dead = match spool.store.dead(&route).await {
            Ok(d) => d,
            Err(e) => return SpoolRefusal::from(e).response(),
        };
        let start = match query_param(query, "after") {
            None => 0,
            Some(after) => match dead.iter().position(|e| e.id == after) {
                Some(i) => i + 1,
                None => {
                    return json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": "not_found", "message": "No dead letter of that route has the id in after (retried or deleted since?); start again without after."}),
                    );
                }
            },
        };
        let rest = &dead[start..];
        let page: Vec<_> = rest.iter().take(limit).map(dead_json).collect();
        json(
            StatusCode::OK,
            serde_json::json!({
                "route": route,
                "dead_letters": dead.len(),
                "dead": page,
                "next": next_after(rest, limit),
            }),
        )
    }

    /// The dead letters `id` names (event id or entry id; every one when
    /// `None`), per route.
    async fn dead_matching(&self, id: Option<&str>) -> Result<Matching<'_>, SpoolRefusal> {
        let (spool, routes) = self.spool()?;
        let mut found = Vec::new();
        for (route, _) in routes {
            let dead = spool.store.dead(&route).await?;
            for e in dead {
                if id.is_none_or(|id| e.id == id || e.record.event_id.as_deref() == Some(id)) {
                    found.push((route.clone(), e));
                }
            }
        }
        Ok((spool, found))
    }

    /// `POST /spool/retry[?id=<event id or entry id>][&force=true]`: the
    /// dead letters `id` names (every one without it) back to live.
    ///
    /// A dead letter first spooled longer than `replay.ttl` ago is *stale*:
    /// the mark that would show its event delivered may have expired since,
    /// so Persona may have delivered the event again meanwhile, and a retry
    /// could deliver it twice. It is retried only with `force=true`.
    ///
    /// * With `id`: all or nothing. When a dead letter it names is stale and
    ///   `force` is not set, nothing is retried: 409 `force_required`, with
    ///   `needs_force` listing them. Else 200 `{"retried": n, "needs_force": []}`.
    /// * Without `id`: every dead letter that is not stale is retried, and the
    ///   stale ones are listed: 200 `{"retried": n, "needs_force": [...]}`
    ///   (with a `message` when the list is not empty).
    ///
    /// Each `needs_force` item: `route`, `id`, `event_id`, `event_type`,
    /// `spooled_at`, `age_seconds` (the dead-letter listing's fields).
    pub(super) async fn spool_retry(&self, id: Option<&str>, force: bool) -> Response<Vec<u8>> {
        let (spool, found) = match self.dead_matching(id).await {
            Ok(f) => f,
            Err(r) => return r.response(),
        };
        if id.is_some() && found.is_empty() {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": "No dead letter has that id."}),
            );
        }
        let ttl = self.shared.policy.load().config.policy.replay.ttl;
        let now = crate::spool::now_ms();
        let since = self.shared.store().remembers_since_ms();
        let (stale, eligible): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|(_, e)| !force && is_stale(e, ttl, now, since));
        let needs_force: Vec<_> = stale
            .iter()
            .map(|(route, e)| {
                let mut v = dead_json(e);
                v["route"] = route.as_str().into();
                v
            })
            .collect();
        if !stale.is_empty() {
            tracing::warn!(
                refused = stale.len(),
                "spool: dead letters first spooled longer than replay.ttl ago not retried without force=true"
            );
        }
        if id.is_some() && !stale.is_empty() {
            return json(
                StatusCode::CONFLICT,
                serde_json::json!({
                    "error": "force_required",
                    "message": STALE_MESSAGE,
                    "needs_force": needs_force,
                }),
            );
        }
        let mut retried = 0;
        for (route, e) in eligible {
            match spool
                .store
                .revive(&route, &e.id, crate::spool::now_ms())
                .await
            {
                Ok(_) => retried += 1,
                Err(crate::spool::SpoolError::NotFound) => {}
                Err(err) => return SpoolRefusal::from(err).response(),
            }
        }
        tracing::info!(retried, force, "spool: dead letters retried by an operator");
        spool.stored();
        let mut answer = serde_json::json!({ "retried": retried, "needs_force": needs_force });
        if !stale.is_empty() {
            answer["message"] = STALE_MESSAGE.into();
        }
        json(StatusCode::OK, answer)
    }

    pub(super) async fn spool_delete(&self, id: Option<&str>) -> Response<Vec<u8>> {
        let Some(id) = id else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "missing_id", "message": "DELETE /spool/dead needs ?id=<event id or entry id>."}),
            );
        };
        let (spool, found) = match self.dead_matching(Some(id)).await {
            Ok(f) => f,
            Err(r) => return r.response(),
        };
        let mut deleted = 0;
        for (route, e) in found {
            match spool.store.delete_dead(&route, &e.id).await {
                Ok(()) => {
                    deleted += 1;
                    tracing::warn!(
                        route,
                        event_id = e.record.event_id.as_deref(),
                        "spool: dead letter deleted by an operator"
                    );
                }
                Err(crate::spool::SpoolError::NotFound) => {}
                Err(err) => return SpoolRefusal::from(err).response(),
            }
        }
        if deleted == 0 {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": "No dead letter has that id."}),
            );
        }
        json(StatusCode::OK, serde_json::json!({ "deleted": deleted }))
    }

    /// Sets the spool gauges of every spooling route (on scrape).
    pub(super) async fn spool_gauges(&self) {
        let Ok((spool, routes)) = self.spool() else {
            return;
        };
        let m = &self.shared.metrics;
        for (route, spooling) in routes {
            match spool.store.stats(&route).await {
                Ok(s) if !spooling && s.depth == 0 && s.dead == 0 && s.unreadable == 0 => {}
                Ok(s) => {
                    m.spool_depth
                        .with_label_values(&[&route])
                        .set(s.depth as i64);
                    m.spool_dead_letters
                        .with_label_values(&[&route])
                        .set(s.dead as i64);
                    m.spool_unreadable
                        .with_label_values(&[&route])
                        .set(s.unreadable as i64);
                    m.spool_oldest_age
                        .with_label_values(&[&route])
                        .set(s.oldest_live_ms.map_or(0, age_seconds) as i64);
                }
                Err(e) => {
                    tracing::warn!(route, error = %e, "spool: cannot read its stats for /metrics")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Record;
    use std::time::Duration;

    fn spooled_at(ms: u64) -> Entry {
        Entry {
            id: "1-1".into(),
            record: Record {
                route: "/h".into(),
                replay_id: "evt_1".into(),
                event_id: Some("evt_1".into()),
                event_type: None,
                token: 1,
                spooled_at_ms: ms,
                live_since_ms: ms,
                head: Vec::new(),
                body: Vec::new(),
            },
        }
    }

    /// Stale means first spooled *longer* than `ttl` ago: exactly `ttl` is
    /// not; a clock that went back is not.
    #[test]
    fn a_dead_letter_is_stale_once_first_spooled_longer_than_ttl_ago() {
        let ttl = Duration::from_secs(60);
        let now = 1_000_000;
        assert!(!is_stale(&spooled_at(now - 60_000), ttl, now, None));
        assert!(is_stale(&spooled_at(now - 60_001), ttl, now, None));
        assert!(!is_stale(&spooled_at(now + 5_000), ttl, now, None));
    }

    /// A store that forgets on a restart (memory) knows nothing of what was
    /// delivered before it started: a dead letter spooled earlier is stale.
    #[test]
    fn a_dead_letter_older_than_a_memory_store_is_stale() {
        let ttl = Duration::from_secs(3600);
        let now = 1_000_000;
        let started = now - 10_000;
        assert!(is_stale(&spooled_at(started - 1), ttl, now, Some(started)));
        assert!(!is_stale(&spooled_at(started), ttl, now, Some(started)));
        assert!(!is_stale(&spooled_at(started - 1), ttl, now, None));
    }
}
