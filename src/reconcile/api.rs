//! Persona's Events API as reconciliation reads it: `GET /api/v1/events`
//! (newest first, `page[size]=100`, `links.next`), `GET /api/v1/webhooks/{id}`
//! (its enabled events), with `Authorization: Bearer <api key>` and
//! `Key-Inflection`. Blocking (the project's one client, [`crate::outbound`]):
//! async code calls it through `tokio::task::spawn_blocking`.
//!
//! No message here quotes the key, a header value or an answer's body.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::{Inflection, Secret};
use crate::outbound;

/// Most bytes of one answer kept (a page of 100 full events).
pub const MAX_PAGE_BYTES: u64 = 32 * 1024 * 1024;

/// How long a run waits at least after a 429 that names no time.
const DEFAULT_PAUSE: Duration = Duration::from_secs(60);

/// One GET: what the API answered (status, headers, body), or why not.
pub trait Fetch: Send + Sync {
    fn get(&self, url: &str, headers: &[(&str, String)])
    -> Result<http::Response<Vec<u8>>, String>;
}

/// [`Fetch`] over the project's HTTP client.
pub struct OutboundFetch(pub outbound::Client);

impl OutboundFetch {
    /// 5 s to connect, 30 s per read.
    pub fn standard() -> Self {
        OutboundFetch(outbound::Client::new(
            Duration::from_secs(5),
            Duration::from_secs(30),
        ))
    }
}

impl Fetch for OutboundFetch {
    fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<http::Response<Vec<u8>>, String> {
        let mut request = http::Request::get(url);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(&[][..])
            .map_err(|_| "not a valid request (the URL is not repeated here)".to_string())?;
        self.0
            .send_up_to(request, MAX_PAGE_BYTES)
            .map_err(|e| outbound::describe(&e))
    }
}

/// Why the API could not be read. Never carries the key or a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 429: the run stops; the next starts no earlier than `resume_at_ms`.
    #[error("rate limited by Persona's API (429); resuming after the time it named")]
    RateLimited { resume_at_ms: u64 },
    #[error("Persona's API refused the API key ({0}): check its value and its permissions")]
    Refused(u16),
    #[error("Persona's API answered {0}")]
    Status(u16),
    #[error("Persona's API could not be reached: {0}")]
    Transport(String),
    #[error("Persona's API answered something other than the documented JSON ({0})")]
    Shape(&'static str),
}

/// One event as listed: what judging reads, and the object itself (the
/// backfill's `data`).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    /// The created-at attribute as written.
    pub created_at: Option<String>,
    /// The same, in Unix milliseconds.
    pub created_ms: Option<u64>,
    pub object: Value,
}

/// One page of the listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<Listed>,
    /// The next page's URL (on the API's own base), if any.
    pub next: Option<String>,
    /// `RateLimit-Remaining: 0` came with the page: no more requests before this.
    pub exhausted_until_ms: Option<u64>,
}

/// The API of one route's `[route.reconcile]`.
#[derive(Clone)]
pub struct Api {
    fetch: Arc<dyn Fetch>,
    base: String,
    key: Secret,
    inflection: Inflection,
}

impl Api {
    pub fn new(fetch: Arc<dyn Fetch>, base: &str, key: Secret, inflection: Inflection) -> Api {
        Api {
            fetch,
            base: base.trim_end_matches('/').to_string(),
            key,
            inflection,
        }
    }

    /// The listing's first page.
    pub fn first_page(&self) -> String {
        format!("{}/api/v1/events?page%5Bsize%5D=100", self.base)
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let key = String::from_utf8_lossy(self.key.expose());
        vec![
            ("Authorization", format!("Bearer {}", key.trim())),
            ("Key-Inflection", self.inflection.as_str().to_string()),
            ("Accept", "application/json".to_string()),
        ]
    }

    /// GETs `url` and reads a JSON answer; `now_ms` dates a 429's pause.
    fn get_json(&self, url: &str, now_ms: u64) -> Result<(Value, Option<u64>), ApiError> {
        let answer = self
            .fetch
            .get(url, &self.headers())
            .map_err(ApiError::Transport)?;
        let status = answer.status().as_u16();
        let headers = answer.headers();
        match status {
            200..=299 => {}
            429 => {
                return Err(ApiError::RateLimited {
                    resume_at_ms: now_ms
                        + pause(headers).unwrap_or(DEFAULT_PAUSE).as_millis() as u64,
                });
            }
            401 | 403 => return Err(ApiError::Refused(status)),
            _ => return Err(ApiError::Status(status)),
        }
        let exhausted = (header_u64(headers, "ratelimit-remaining") == Some(0))
            .then(|| now_ms + pause(headers).unwrap_or(Duration::from_secs(1)).as_millis() as u64);
        let body =
            serde_json::from_slice(answer.body()).map_err(|_| ApiError::Shape("not JSON"))?;
        Ok((body, exhausted))
    }

    /// One page of `GET /api/v1/events` at `url`.
    pub fn page(&self, url: &str, now_ms: u64) -> Result<Page, ApiError> {
        let (body, exhausted_until_ms) = self.get_json(url, now_ms)?;
        let data = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or(ApiError::Shape("no data list"))?;
        let events = data
            .iter()
            .map(|o| self.listed(o))
            .collect::<Result<Vec<_>, _>>()?;
        let next = body
            .get("links")
            .and_then(|l| l.get("next"))
            .and_then(Value::as_str)
            .and_then(|n| self.next_url(n));
        Ok(Page {
            events,
            next,
            exhausted_until_ms,
        })
    }

    fn listed(&self, object: &Value) -> Result<Listed, ApiError> {
        let id = object.get("id").and_then(Value::as_str);
        let attributes = object.get("attributes");
        let name = attributes
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(ApiError::Shape("an event without id or name"));
        };
        let created_at = attributes
            .and_then(|a| a.get(created_key(self.inflection)))
            .and_then(Value::as_str)
            .map(str::to_string);
        let created_ms = created_at.as_deref().and_then(parse_time_ms);
        Ok(Listed {
            id: id.to_string(),
            name: name.to_string(),
            created_at,
            created_ms,
            object: object.clone(),
        })
    }

    /// `links.next` as a URL on this API's base: a path is joined to the
    /// base; an absolute URL is followed only on the same base (the key is
    /// never sent elsewhere).
    fn next_url(&self, link: &str) -> Option<String> {
        if link.starts_with('/') {
            return Some(format!("{}{link}", self.base));
        }
        let on_base = link
            .strip_prefix(self.base.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        on_base.then(|| link.to_string())
    }

    /// The enabled events of webhook `id` (`GET /api/v1/webhooks/{id}`).
    pub fn webhook_events(&self, id: &str, now_ms: u64) -> Result<Vec<String>, ApiError> {
        let url = format!("{}/api/v1/webhooks/{id}", self.base);
        let (body, _) = self.get_json(&url, now_ms)?;
        let key = match self.inflection {
            Inflection::Kebab => "enabled-events",
            Inflection::Camel => "enabledEvents",
            Inflection::Snake => "enabled_events",
        };
        let list = body
            .get("data")
            .and_then(|d| d.get("attributes"))
            .and_then(|a| a.get(key))
            .and_then(Value::as_array)
            .ok_or(ApiError::Shape("a webhook without its enabled events"))?;
        Ok(list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect())
    }
}

/// The created-at attribute's name under `inflection`.
pub fn created_key(inflection: Inflection) -> &'static str {
    match inflection {
        Inflection::Kebab => "created-at",
        Inflection::Camel => "createdAt",
        Inflection::Snake => "created_at",
    }
}

/// An RFC 3339 time (`2026-11-26T10:00:00.000Z`) in Unix milliseconds.
pub fn parse_time_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

fn header_u64(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// How long the API asked to wait: the later of `Retry-After` (seconds) and
/// `RateLimit-Reset` (seconds until the window resets; a value that looks
/// like a Unix time is read as one).
fn pause(headers: &http::HeaderMap) -> Option<Duration> {
    let retry_after = header_u64(headers, "retry-after");
    let reset = header_u64(headers, "ratelimit-reset").map(|r| {
        if r > 1_000_000_000 {
            r.saturating_sub(crate::clock::unix_now().as_secs())
        } else {
            r
        }
    });
    retry_after.max(reset).map(Duration::from_secs)
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
