//! The admin listener (separate from the public one; loopback by default).
//!
//! * `GET /healthz`: 200 while the process serves.
//! * `GET /readyz`: 200 once the public listener has accepted connections
//!   (latched at start), while the replay store answers and until SIGTERM;
//!   503 with a JSON reason otherwise.
//! * `GET /metrics`: Prometheus text exposition (see `metrics.rs`).
//! * `GET /spool`: per spooling route its depth, oldest age, bytes and dead
//!   letters (the first [`DEAD_LISTED`] of them listed, and `dead_next` when
//!   there are more); `GET /spool/dead?route=&after=&limit=`: one route's
//!   dead letters a page at a time.
//! * `GET /reconcile`: each reconciling route's last run against Persona's
//!   Events API (when, events seen and judged, missing ids, the error if it
//!   stopped early; with the memory store, since when events are judged).
//! * `POST /spool/retry[?id=][&force=true]`: every dead letter back to live,
//!   or only those whose event id (or entry id) is `id`; one first spooled
//!   longer than `replay.ttl` ago only with `force=true` (see `spool.rs`).
//!   `DELETE /spool/dead?id=`: deletes those dead letters.
//!
//! # Routing
//!
//! `route` matches the path once and checks the method inside each arm: a
//! known path with a method it does not answer is 405 `method_not_allowed`
//! with `Allow`; an unknown path is 404 `not_found`, whatever the method.
//! Neither depends on who asks.
//!
//! # Who may change state
//!
//! `GET` is the only read-only method here: every other method an endpoint
//! answers changes state (`POST /spool/retry`, `DELETE /spool/dead`, and
//! whatever comes later), and every such call passes `Admin::authorize`
//! (`access.rs`) before its handler runs. It is answered only for a peer at
//! `127.0.0.1` or `::1` (taken literally: `127.0.0.2` is not one; a
//! dual-stack listener's `::ffff:127.0.0.1` is `127.0.0.1`), or for a request carrying
//! `Authorization: Bearer <token>` equal to `[admin] token` (compared in
//! constant time; the running configuration's, so a SIGHUP reload reads a new
//! one). Anything else is 403 `forbidden`, counted in
//! `persona_guard_admin_refused_total{reason}` and logged with the peer,
//! never the token. Read-only calls answer every peer: the kubelet's probes
//! and the metrics scrape come from the pod network.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::state::Shared;

mod access;
mod spool;

pub use spool::DEAD_LISTED;

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

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

/// The project's JSON error body: `{"error": code, "message": ...}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({"error": code, "message": message}),
    )
}

/// The parameter `key` of an admin query, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// One admin call: an endpoint and a method it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Healthz,
    Readyz,
    Metrics,
    SpoolList,
    SpoolDeadPage,
    SpoolRetry,
    SpoolDelete,
    Reconcile,
}

/// Every admin path and the methods it answers (its `Allow`); a unit test
/// holds `route` to this table.
const ENDPOINTS: [(&str, &str); 7] = [
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/spool", "GET"),
    ("/spool/dead", "GET, DELETE"),
    ("/spool/retry", "POST"),
    ("/reconcile", "GET"),
];

/// Why a request names no call: the path is not on the map, or it does not
/// answer the method (with the methods it does: its `Allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    NotFound,
    NotAllowed { allow: &'static str },
}

impl Miss {
    /// 404 `not_found`, or 405 `method_not_allowed` with `Allow`.
    fn response(self, path: &str) -> Response<Vec<u8>> {
        match self {
            Miss::NotFound => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "Try /healthz, /readyz, /metrics or /spool.",
            ),
            Miss::NotAllowed { allow } => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!("{path} answers {allow} only."),
                );
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                r
            }
        }
    }
}

/// The call a request makes: the path matched once, the method checked in
/// its arm.
fn route(method: &Method, path: &str) -> Result<Call, Miss> {
    let call = match path {
        "/healthz" => (*method == Method::GET).then_some(Call::Healthz),
        "/readyz" => (*method == Method::GET).then_some(Call::Readyz),
        "/metrics" => (*method == Method::GET).then_some(Call::Metrics),
        "/spool" => (*method == Method::GET).then_some(Call::SpoolList),
        "/spool/dead" => match *method {
            Method::GET => Some(Call::SpoolDeadPage),
            Method::DELETE => Some(Call::SpoolDelete),
            _ => None,
        },
        "/spool/retry" => (*method == Method::POST).then_some(Call::SpoolRetry),
        "/reconcile" => (*method == Method::GET).then_some(Call::Reconcile),
        _ => return Err(Miss::NotFound),
    };
    call.ok_or_else(|| Miss::NotAllowed {
        allow: ENDPOINTS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("GET", |(_, allow)| allow),
    })
}

impl Admin {
    /// Ready once the public listener has accepted (a latch set at start,
    /// see `server::lifecycle`) and the spool directory's lock is held (when
    /// the process waits for it), while the replay store answers, and until
    /// SIGTERM.
    async fn ready(&self) -> Result<(), &'static str> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err("shutting down");
        }
        if !self.shared.started.load(Ordering::SeqCst) {
            return Err("the public listener is not accepting connections yet");
        }
        if self.shared.spool_waiting.load(Ordering::SeqCst) {
            return Err("waiting for the spool directory's lock (another process uses the spool)");
        }
        if self.shared.store().ready().await.is_err() {
            return Err("the replay store (redis) does not answer");
        }
        let policy = self.shared.policy.load();
        let waiting = policy.routes.iter().filter_map(|r| r.auth.oauth.as_ref());
        if waiting.clone().any(|(_, set)| !set.is_ready()) {
            return Err("an OAuth route's JWKS (the issuer's keys) is not fetched yet");
        }
        Ok(())
    }

    async fn serve(&self, call: Call, query: Option<&str>) -> Response<Vec<u8>> {
        let id = query_param(query, "id");
        match call {
            Call::Healthz => reply(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            Call::Readyz => match self.ready().await {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/json",
                    br#"{"status":"ready"}"#.to_vec(),
                ),
                Err(reason) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready", "reason": reason}),
                ),
            },
            Call::Metrics => {
                let m = &self.shared.metrics;
                m.buffered_body_bytes.set(self.shared.budget.held() as i64);
                self.spool_gauges().await;
                for r in self.shared.policy.load().routes.iter() {
                    if let Some(age) = r.auth.oauth.as_ref().and_then(|(_, s)| s.age_seconds()) {
                        let g = m.auth.jwks_age.with_label_values(&[r.route.path.as_str()]);
                        g.set(i64::try_from(age).unwrap_or(i64::MAX));
                    }
                }
                if let Some(stats) = self.shared.store().local_stats() {
                    m.replay_entries.set(stats.entries as i64);
                    let evicted = stats.evicted_early;
                    m.replay_evictions
                        .inc_by(evicted.saturating_sub(m.replay_evictions.get()));
                }
                reply(StatusCode::OK, "text/plain; version=0.0.4", m.render())
            }
            Call::SpoolList => self.spool_list().await,
            Call::SpoolDeadPage => self.spool_dead_page(query).await,
            Call::SpoolRetry => match query_param(query, "force").as_deref() {
                None | Some("false") => self.spool_retry(id.as_deref(), false).await,
                Some("true") => self.spool_retry(id.as_deref(), true).await,
                Some(_) => error(
                    StatusCode::BAD_REQUEST,
                    "bad_force",
                    "force is true or false.",
                ),
            },
            Call::SpoolDelete => self.spool_delete(id.as_deref()).await,
            Call::Reconcile => self.reconcile(),
        }
    }
}

impl Admin {
    /// `GET /reconcile`: every reconciling route of the running policy,
    /// with its last run (`null` before the first).
    fn reconcile(&self) -> Response<Vec<u8>> {
        let policy = self.shared.policy.load();
        let routes: Vec<serde_json::Value> = policy
            .config
            .policy
            .routes
            .iter()
            .filter(|r| r.reconcile.is_some())
            .map(|r| {
                let run = self.shared.reconcile.get(&r.path);
                serde_json::json!({"route": r.path, "last_run": run})
            })
            .collect();
        let since = self.shared.store().remembers_since_ms().map(|ms| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        });
        json(
            StatusCode::OK,
            serde_json::json!({
                "routes": routes,
                "memory_store_judges_events_created_after": since,
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, uri) = (req.method.clone(), req.uri.clone());
        let call = match route(&method, uri.path()) {
            Ok(call) => call,
            Err(miss) => return miss.response(uri.path()),
        };
        if method != Method::GET
            && let Err(refusal) = self.authorize(session, &method, uri.path())
        {
            return refusal.response();
        }
        self.serve(call, uri.query()).await
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

    const METHODS: [Method; 6] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];

    /// Every known path: the methods in its `Allow` are answered, any other
    /// is 405 with that `Allow`; an unknown path is 404 whatever the method.
    #[test]
    fn a_known_path_with_another_method_is_405_and_an_unknown_path_404() {
        for (path, allow) in ENDPOINTS {
            let answered: Vec<&str> = allow.split(", ").collect();
            for m in &METHODS {
                match route(m, path) {
                    Ok(_) => assert!(answered.contains(&m.as_str()), "{m} {path}"),
                    Err(miss) => {
                        assert!(!answered.contains(&m.as_str()), "{m} {path}");
                        assert_eq!(miss, Miss::NotAllowed { allow }, "{m} {path}");
                        let r = miss.response(path);
                        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
                        assert_eq!(r.headers()[http::header::ALLOW], allow, "{m} {path}");
                    }
                }
            }
        }
        for path in [
            "/",
            "/nowhere",
            "/spool/",
            "/spool/retry/x",
            "/healthz/",
            "/SPOOL",
        ] {
            for m in &METHODS {
                assert_eq!(route(m, path), Err(Miss::NotFound), "{m} {path}");
                let r = Miss::NotFound.response(path);
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{m} {path}");
                assert!(r.headers().get(http::header::ALLOW).is_none());
            }
        }
    }

    /// What `response` authorizes (every method but GET) is exactly the
    /// calls that change state: none is reachable with GET.
    #[test]
    fn every_state_changing_call_is_reached_by_a_method_that_is_authorized() {
        let mut by_get = Vec::new();
        let mut by_other = Vec::new();
        for (path, _) in ENDPOINTS {
            for m in &METHODS {
                if let Ok(call) = route(m, path) {
                    if *m == Method::GET {
                        by_get.push(call);
                    } else {
                        by_other.push(call);
                    }
                }
            }
        }
        assert_eq!(by_other, [Call::SpoolDelete, Call::SpoolRetry]);
        assert!(by_get.iter().all(|c| !by_other.contains(c)), "{by_get:?}");
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
