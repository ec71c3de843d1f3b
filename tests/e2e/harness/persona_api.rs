//! A fake of Persona's Events API, following its documented shapes:
//! `GET /api/v1/events` (JSON:API events newest first, `page[size]` 1-100,
//! `links.next` with `page[after]`), `GET /api/v1/webhooks/{id}` (its
//! `enabled-events`), `Authorization: Bearer <key>` checked (401 otherwise),
//! and a 429 with `Retry-After` and `RateLimit-Reset` on request.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};

pub const API_KEY: &str = "persona_sandbox_e2e_KEYCANARY";

#[derive(Default)]
struct State {
    /// Newest first.
    events: Mutex<Vec<Value>>,
    enabled: Mutex<Vec<String>>,
    /// Answer 429 to the request with this number (1-based), once.
    limit_at: Mutex<Option<usize>>,
    requests: AtomicUsize,
    event_requests: AtomicUsize,
}

pub struct PersonaApi {
    pub addr: SocketAddr,
    state: Arc<State>,
}

/// An event as Persona's API lists it, created at `created` (Unix seconds).
pub fn api_event(id: &str, name: &str, created: i64) -> Value {
    let at = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(created as u64),
    )
    .to_string();
    json!({"type": "event", "id": id, "attributes": {
        "name": name, "created-at": at, "redacted-at": null,
        "payload": {"data": {"type": "inquiry", "id": "inq_e2e", "attributes": {"status": "approved"}}}
    }})
}

impl PersonaApi {
    pub fn start() -> PersonaApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<State> = Arc::default();
        let s = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                thread::spawn(move || serve(&s, conn));
            }
        });
        PersonaApi { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the organisation's events (any order: kept newest first).
    pub fn set_events(&self, mut events: Vec<Value>) {
        events.sort_by(|a, b| {
            let at = |v: &Value| {
                v["attributes"]["created-at"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            at(b).cmp(&at(a))
        });
        *self.state.events.lock().unwrap() = events;
    }

    pub fn set_enabled_events(&self, names: &[&str]) {
        *self.state.enabled.lock().unwrap() = names.iter().map(|s| s.to_string()).collect();
    }

    /// The next `n`-th request from now is answered 429.
    pub fn limit_in(&self, n: usize) {
        let at = self.state.requests.load(Ordering::SeqCst) + n;
        *self.state.limit_at.lock().unwrap() = Some(at);
    }

    pub fn event_requests(&self) -> usize {
        self.state.event_requests.load(Ordering::SeqCst)
    }
}

fn serve(s: &State, conn: std::net::TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split(' ').nth(1).unwrap_or("/").to_string();
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((n, v)) = h.split_once(':')
            && n.eq_ignore_ascii_case("authorization")
        {
            auth = v.trim().to_string();
        }
    }
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let (status, extra, body) = answer(s, n, &target, &auth);
    let body = body.to_string();
    let mut out = conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRateLimit-Limit: 300\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn answer(s: &State, n: usize, target: &str, auth: &str) -> (u16, String, Value) {
    if auth != format!("Bearer {API_KEY}") {
        return (
            401,
            String::new(),
            json!({"errors": [{"title": "Must be authenticated"}]}),
        );
    }
    {
        let mut limit = s.limit_at.lock().unwrap();
        if *limit == Some(n) {
            *limit = None;
            let extra = "Retry-After: 1\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 2\r\n";
            return (
                429,
                extra.into(),
                json!({"errors": [{"title": "Too many requests"}]}),
            );
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(id) = path.strip_prefix("/api/v1/webhooks/") {
        let enabled = s.enabled.lock().unwrap().clone();
        return (
            200,
            String::new(),
            json!({"data": {"type": "webhook", "id": id, "attributes": {"enabled-events": enabled}}}),
        );
    }
    if path != "/api/v1/events" {
        return (
            404,
            String::new(),
            json!({"errors": [{"title": "Not found"}]}),
        );
    }
    s.event_requests.fetch_add(1, Ordering::SeqCst);
    let param = |name: &str| {
        query.split('&').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            let k = k.replace("%5B", "[").replace("%5D", "]");
            (k == name).then(|| v.to_string())
        })
    };
    let size: usize = param("page[size]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let events = s.events.lock().unwrap();
    let start = match param("page[after]") {
        Some(after) => events
            .iter()
            .position(|e| e["id"] == after.as_str())
            .map_or(events.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<Value> = events.iter().skip(start).take(size).cloned().collect();
    let next = (start + size < events.len()).then(|| {
        format!(
            "/api/v1/events?page%5Bafter%5D={}&page%5Bsize%5D={size}",
            page.last().unwrap()["id"].as_str().unwrap()
        )
    });
    (
        200,
        String::new(),
        json!({"data": page, "links": {"prev": null, "next": next}}),
    )
}
