//! The admin listener (separate from the public one; loopback by default).
//!
//! * `GET /healthz`: 200 while the process serves.
//! * `GET /readyz`: 200 once the public listener has accepted connections
//!   (latched at start), while the replay store answers and until SIGTERM;
//!   503 with a JSON reason otherwise.
//! * `GET /metrics`: Prometheus text exposition (see `metrics.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::state::Shared;

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

impl Admin {
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
        if req.method != Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                br#"{"error":"method_not_allowed"}"#.to_vec(),
            );
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
                br#"{"error":"not_found","message":"Try /healthz, /readyz or /metrics."}"#.to_vec(),
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
