//! The admin listener (separate from the public one; loopback by default).
//!
//! * `GET /healthz`: 200 while the process serves.
//! * `GET /readyz`: 200 once the public listener has accepted connections
//!   (latched at start), while the replay store answers and until SIGTERM;
//!   503 with a JSON reason otherwise.
//! * `GET /metrics`: Prometheus text exposition (see `metrics.rs`).
//! * `GET /spool`: per spooling route its depth, oldest age, bytes and dead
//!   letters (the first [`DEAD_LISTED`] of them listed).
//! * `POST /spool/retry`: every dead letter back to live, or only those
//!   whose event id (or entry id) is `?id=`; `DELETE /spool/dead?id=`: deletes
//!   those dead letters. These change the spool: the admin listener belongs
//!   on loopback or a network only operators reach.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::SpoolMode;
use crate::spool::{Entry, Handle};
use crate::state::Shared;

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

pub struct Admin {
    pub shared: Arc<Shared>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// How many dead letters `GET /spool` lists per route (all are counted).
pub const DEAD_LISTED: usize = 100;

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

/// The `id` parameter of an admin query, percent-decoded.
fn query_id(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.into_owned())
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
            .routes
            .iter()
            .map(|r| (r.path.clone(), r.spool != SpoolMode::Off))
            .collect();
        Ok((spool, routes))
    }

    async fn spool_list(&self) -> Response<Vec<u8>> {
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
            if !spooling && stats.depth == 0 && stats.dead == 0 {
                continue;
            }
            let dead = spool.store.dead(&route).await?;
            let listed: Vec<_> = dead
                .iter()
                .take(DEAD_LISTED)
                .map(|e| {
                    serde_json::json!({
                        "id": e.id,
                        "event_id": e.record.event_id,
                        "event_type": e.record.event_type,
                        "spooled_at": rfc3339(e.record.spooled_at_ms),
                        "age_seconds": age_seconds(e.record.live_since_ms),
                    })
                })
                .collect();
            out.push(serde_json::json!({
                "route": route,
                "depth": stats.depth,
                "oldest_age_seconds": stats.oldest_live_ms.map_or(0, age_seconds),
                "bytes": stats.bytes,
                "dead_letters": stats.dead,
                "dead": listed,
            }));
        }
        Ok(serde_json::json!({ "routes": out }))
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

    async fn spool_retry(&self, id: Option<&str>) -> Response<Vec<u8>> {
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
        let mut retried = 0;
        for (route, e) in found {
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
        tracing::info!(retried, "spool: dead letters retried by an operator");
        spool.stored();
        json(StatusCode::OK, serde_json::json!({ "retried": retried }))
    }

    async fn spool_delete(&self, id: Option<&str>) -> Response<Vec<u8>> {
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
    async fn spool_gauges(&self) {
        let Ok((spool, routes)) = self.spool() else {
            return;
        };
        let m = &self.shared.metrics;
        for (route, spooling) in routes {
            match spool.store.stats(&route).await {
                Ok(s) if !spooling && s.depth == 0 && s.dead == 0 => {}
                Ok(s) => {
                    m.spool_depth
                        .with_label_values(&[&route])
                        .set(s.depth as i64);
                    m.spool_dead_letters
                        .with_label_values(&[&route])
                        .set(s.dead as i64);
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

    /// Ready once the public listener has accepted (a latch set at start,
    /// see `server::lifecycle`), while the replay store answers, and until
    /// SIGTERM.
    async fn ready(&self) -> Result<(), &'static str> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err("shutting down");
        }
        if !self.shared.started.load(Ordering::SeqCst) {
            return Err("the public listener is not accepting connections yet");
        }
        if self.shared.store().ready().await.is_err() {
            return Err("the replay store (redis) does not answer");
        }
        Ok(())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let id = query_id(req.uri.query());
        match (&req.method, req.uri.path()) {
            (&Method::GET, "/spool") => return self.spool_list().await,
            (&Method::POST, "/spool/retry") => return self.spool_retry(id.as_deref()).await,
            (&Method::DELETE, "/spool/dead") => return self.spool_delete(id.as_deref()).await,
            (_, "/spool" | "/spool/retry" | "/spool/dead") | (&Method::GET, _) => {}
            _ => {
                return reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "application/json",
                    br#"{"error":"method_not_allowed"}"#.to_vec(),
                );
            }
        }
        match req.uri.path() {
            "/healthz" => reply(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" => match self.ready().await {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/json",
                    br#"{"status":"ready"}"#.to_vec(),
                ),
                Err(reason) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    serde_json::json!({"status": "not_ready", "reason": reason})
                        .to_string()
                        .into_bytes(),
                ),
            },
            "/metrics" => {
                let m = &self.shared.metrics;
                m.buffered_body_bytes.set(self.shared.budget.held() as i64);
                self.spool_gauges().await;
                if let Some(stats) = self.shared.store().local_stats() {
                    m.replay_entries.set(stats.entries as i64);
                    let evicted = stats.evicted_early;
                    m.replay_evictions
                        .inc_by(evicted.saturating_sub(m.replay_evictions.get()));
                }
                reply(StatusCode::OK, "text/plain; version=0.0.4", m.render())
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not_found","message":"Try /healthz, /readyz, /metrics or /spool."}"#
                    .to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Env};
    use crate::metrics::Metrics;
    use crate::replay::memory::{MemoryStore, SystemClock};
    use pingora::connectors::http::v1::Connector;

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn admin() -> Admin {
        let text = "[listen]\naddress = \"127.0.0.1:2\"\n[admin]\naddress = \"127.0.0.1:1\"\n\
             [[route]]\npath = \"/h\"\nsecrets = [\"s\"]\n";
        let cfg = config::from_str(text, &NoEnv).unwrap();
        let store = Arc::new(MemoryStore::new(10, Arc::new(SystemClock::default())));
        Admin {
            shared: Arc::new(Shared::new(
                cfg,
                store,
                Metrics::new(),
                Connector::new(None),
            )),
        }
    }

    #[tokio::test]
    async fn ready_only_after_the_start_latch_and_until_draining() {
        let admin = admin();
        assert_eq!(
            admin.ready().await,
            Err("the public listener is not accepting connections yet")
        );
        admin.shared.started.store(true, Ordering::SeqCst);
        assert_eq!(admin.ready().await, Ok(()));

        admin.shared.draining.store(true, Ordering::SeqCst);
        assert_eq!(admin.ready().await, Err("shutting down"));
    }
}
