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

use crate::state::Shared;

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

/// The parameter `key` of an admin query, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
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
        Ok(())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let id = query_param(req.uri.query(), "id");
        match (&req.method, req.uri.path()) {
            (&Method::GET, "/spool") => return self.spool_list().await,
            (&Method::POST, "/spool/retry") => return self.spool_retry(id.as_deref()).await,
            (&Method::DELETE, "/spool/dead") => return self.spool_delete(id.as_deref()).await,
            (&Method::GET, "/spool/dead") => return self.spool_dead_page(req.uri.query()).await,
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
