//! `persona-guard echo`: a tiny upstream for trying persona-guard without an app.
//!
//! It answers every request with 200 and a JSON summary of what arrived (method,
//! path, body size and the trusted headers), and prints the same summary on
//! stdout, so a newcomer can see exactly what the application would receive.
//! It never prints the body.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::config::schema::default_str;

struct Echo;

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut bytes = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            bytes += chunk.len();
        }
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let summary = serde_json::json!({
            "method": req.method.as_str(),
            "path": String::from_utf8_lossy(req.raw_path()),
            "body_bytes": bytes,
            "event_type": header(default_str("headers.event_type").unwrap_or_default()),
            "event_id": header(default_str("headers.event_id").unwrap_or_default()),
            "event_created_at": header(default_str("headers.event_created_at").unwrap_or_default()),
        })
        .to_string();
        println!("echo: {summary}");
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, summary.len())
            .body(summary.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// Serves the echo upstream on `listen` until SIGTERM/SIGINT.
pub fn run(listen: &str) {
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("echo".to_string(), Echo);
    service.add_tcp(listen);
    server.add_service(service);
    println!("echo: listening on {listen}");
    server.run(RunArgs::default());
}
