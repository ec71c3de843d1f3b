//! Every default of the route file, and the limits validation enforces, in one
//! place (re-exported as `config::DEFAULT_*`).

use std::time::Duration;

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener (health, readiness, metrics): loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Default upstream (the application).
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:3000";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a delivered id is remembered: longer than Persona's automatic
/// retries ([`PERSONA_RETRY_WINDOW`]), with a day to spare.
pub const DEFAULT_TTL: Duration = Duration::from_secs(72 * 3600);
/// Persona retries a failed delivery up to 7 more times, about 3, 64, 729,
/// 4096, 15625, 46656 and 117649 s after the first attempt: the last one comes
/// 184,822 s (about 51.3 h) after it. A `replay.ttl` shorter than this lets a
/// late retry of a delivered event through; `check` warns about it.
pub const PERSONA_RETRY_WINDOW: Duration = Duration::from_secs(184_822);
/// Ids the memory store remembers: ~418 bytes each, so at most ~120 MiB, which
/// holds 72 h of about 4,100 deliveries an hour (see `docs/replay.md`, "Sizing").
pub const DEFAULT_CAPACITY: u64 = 300_000;
pub const DEFAULT_INFLIGHT_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_KEY_PREFIX: &str = "persona-guard:";
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Whole-body deadline on a webhook route: a client trickling its body is cut off.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head must arrive whole within this, from its first byte (from
/// the connection's start for a connection's first request).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle keep-alive client connection is kept open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM grace period: in-flight requests may finish within it.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_EVENT_TYPE_HEADER: &str = "X-Persona-Event-Type";
pub const DEFAULT_EVENT_ID_HEADER: &str = "X-Persona-Event-Id";
pub const DEFAULT_EVENT_CREATED_AT_HEADER: &str = "X-Persona-Event-Created-At";
/// Largest `max_body` accepted: the body is held in memory while it is verified.
pub const MAX_MAX_BODY: u64 = 64 * 1024 * 1024;
/// Default `[server] max_connections`: open client connections, all peers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `[server] max_connections_per_peer`: open client connections from
/// one TCP peer address (peers in `trusted_proxies` are exempt).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
/// Default `[server] max_buffered`: webhook body bytes held at once.
pub const DEFAULT_MAX_BUFFERED: u64 = 64 * 1024 * 1024;
/// Default `[server] max_buffered_per_client`: this share of `max_buffered`
/// (raised to the largest route `max_body`).
pub const DEFAULT_PER_CLIENT_SHARE: u64 = 8;
/// Default `[server] min_body_rate`: passthrough body bytes per second.
pub const DEFAULT_MIN_BODY_RATE: u64 = 1024;
/// Time a passthrough body has before `min_body_rate` applies.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);
/// Default `[spool] max_bytes`: the spool's bytes on disk, all entries together.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest `[spool] max_bytes` accepted.
pub const MIN_SPOOL_MAX_BYTES: u64 = 1024;
/// Default `[spool] max_age`: a live entry older than this becomes a dead letter.
pub const DEFAULT_SPOOL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `[spool] max_backoff`: the longest wait between two redeliveries.
pub const DEFAULT_SPOOL_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Shortest `[spool] max_age` and `max_backoff` accepted.
pub const MIN_SPOOL_DURATION: Duration = Duration::from_secs(1);
/// Default `[tracing] sampling_ratio`: every new trace is recorded.
pub const DEFAULT_SAMPLING_RATIO: f64 = 1.0;
/// Default `[tracing] service_name`.
pub const DEFAULT_SERVICE_NAME: &str = "persona-guard";
