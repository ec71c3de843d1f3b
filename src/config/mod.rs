//! The route file, from TOML text to the typed [`Config`] the rest of the
//! program uses.
//!
//! # One schema, one parse
//!
//! `schema.rs` is the one description of the file: [`schema::KEYS`] gives
//! every key its kind, default, variable, restart-only flag and doc line.
//! Loading ([`load()`], [`load_with`], [`from_str`]; `load.rs`) then runs once
//! through it:
//!
//! 1. `doc.rs` parses the text once (`toml_edit`, with spans) and walks it
//!    against the schema: every unknown key and table by name and line, with
//!    the closest allowed name (`unknown.rs`), then every value of the wrong
//!    type by key path and line. The result is a `Doc`: values by key path.
//! 2. `env.rs` lays the `PERSONA_GUARD_*` variables over it (one naming rule),
//!    recording where each value came from for `check --print`; a file is
//!    optional. Problems under a key a variable set are named by the variable.
//! 3. `load.rs` reads every key, in file order, through the `Check`
//!    collector (`check.rs`): one typed accessor per kind (choice, count,
//!    size, duration, address, header name, secret) with the schema's
//!    default, each problem recorded under its key instead of stopping. The
//!    section files hold what is more than a key's kind: `server.rs`
//!    (listeners, TLS, admin token, CIDR lists), `upstream.rs`, `replay.rs`,
//!    `headers.rs`, `spool.rs`, `tracing.rs`, `routes.rs` (`[[route]]`), and
//!    `cross.rs` for the rules that relate two sections. Secrets are read
//!    (`secret.rs`) and the listener's key pair loaded now: a missing secret
//!    is a configuration error, never a runtime surprise.
//!
//! A [`Config`] is two parts: [`ProcessConfig`], the compiled restart-only
//! keys of the schema (a SIGHUP reload names each one it cannot apply,
//! [`ProcessConfig::diff`], and keeps the running part,
//! [`ProcessConfig::keep`]), and [`PolicyConfig`], everything a reload swaps.
//!
//! # Error messages never quote the file
//!
//! A secret may be written in the wrong place (`secrets = "wbhsec_…"`, pasted
//! as a key, into `redis_url`), and the messages are printed by `check`, at
//! start and in the SIGHUP log. So no message repeats a value from the file,
//! nor a key that looks like a secret (`unknown::looks_like_secret`: such a
//! key is named by its line alone); each names the key path (the schema's
//! names and list indices), the line, and what is expected or allowed:
//!
//! - type errors are built from the schema's type and the *kind* of value
//!   found (`expected a list, found a string (line 26)`);
//! - TOML syntax errors: `error::syntax_problem` rebuilds the parser's message
//!   from an allow-list of its fixed phrases and grammar tokens;
//! - validation: `Check::problem` takes only `&'static str`; the few messages
//!   with computed parts go through `Check::problem_with` and interpolate no
//!   text from the file, except an unset `env:` variable's name when it looks
//!   like a conventional one (`secret::looks_like_env_name`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use pingora::tls::sign::CertifiedKey;

use crate::event::Fact;
use crate::path;
use crate::source::AllowList;

mod auth;
mod check;
mod cross;
mod doc;
pub mod env;
mod error;
mod headers;
mod load;
mod process;
mod reconcile;
mod replay;
mod routes;
pub mod schema;
mod secret;
mod server;
mod spool;
#[cfg(test)]
mod tests;
mod tracing;
mod unknown;
mod upstream;

pub use self::tracing::{SamplingRatio, TracingSettings};
pub use check::MAX_MAX_BODY;
pub use check::canonical_header;
pub use cross::PERSONA_RETRY_WINDOW;
pub use error::{ConfigError, Problem};
pub use load::{Effective, NO_FILE, from_str, load, load_with};
pub use process::{ProcessConfig, RestartOnly};
pub use reconcile::{Inflection, ReconcileMode, ReconcileRule};
pub use secret::{Env, EnvSource, Secret};
pub use spool::{Redelivery, SpoolKey, SpoolMode, SpoolSettings};

/// Certificate and key (PEM files) of the public TLS listener; defined by
/// `tls`, which takes paths rather than configuration types.
pub use crate::tls::ListenTls;

/// What to do with a path under no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Forward,
    Deny,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    Text,
    Json,
}

/// The replay store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis(RedisSettings),
}

impl StoreKind {
    /// The word `replay.store` takes for this kind.
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis(_) => "redis",
        }
    }
}

/// Where and how to reach Redis. `Debug` never shows the URL (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub password: Option<Secret>,
    pub key_prefix: String,
    /// Bounds connecting and every command.
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a webhook route does when the Redis store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// 503 `replay_store_unavailable`, nothing forwarded (Persona retries later).
    Reject,
    /// Forward without replay protection.
    Allow,
}

/// One entry of an `events` allow-list: an exact name or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Exact(String),
    Prefix(String),
}

impl EventPattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            EventPattern::Exact(e) => e == name,
            EventPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    /// The address as written, without scheme (`app.internal:8443`): the
    /// `Host` value for `host_header = "upstream"`.
    pub authority: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// TLS to the upstream (`https://` or `tls = true`).
    pub tls: bool,
    /// Server name sent and verified (default: the host of the address).
    pub sni: String,
    /// Verify the upstream certificate and name (default true).
    pub verify: bool,
    pub host_header: HostHeader,
}

/// Which `Host` the upstream sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's `Host` (default).
    Keep,
    /// The upstream's own authority.
    Upstream,
}

/// The listener's certificate chain and private key as validation loaded them
/// from [`ListenTls`]'s files and found to match, kept so the listener can
/// serve them without reading the files again. `Debug` shows neither.
#[derive(Clone)]
pub struct ListenCert(Arc<CertifiedKey>);

impl ListenCert {
    /// The key pair, ready for [`crate::tls::ReloadableCert`]; its chain is
    /// not yet checked against the clock ([`crate::tls::check_chain`]).
    pub fn key(&self) -> Arc<CertifiedKey> {
        self.0.clone()
    }
}

impl fmt::Debug for ListenCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListenCert(<loaded>)")
    }
}

/// `[replay]` as a reload applies it (the store itself is a [`ProcessConfig`]'s).
#[derive(Debug, Clone)]
pub struct Replay {
    pub on_store_error: OnStoreError,
    pub ttl: Duration,
    pub inflight_ttl: Duration,
}

/// The trusted headers, each with the fact it carries: the one list that
/// stripping (every request) and setting (an admitted delivery) go through.
/// Names are lower-case with `-` (the form client headers are compared in).
pub type TrustedHeaders = Vec<(Fact, HeaderName)>;

#[derive(Debug, Clone)]
pub struct Route {
    /// The path as written in the file (for logs and metrics labels).
    pub path: String,
    /// The normalised path (the replay store's key for this route).
    pub normalized: Vec<u8>,
    /// The path's segments, compared with every reading of a request target.
    pub matcher: path::RoutePath,
    pub secrets: Vec<Secret>,
    pub tolerance: Duration,
    pub max_body: u64,
    /// `None`: every event type is forwarded.
    pub events: Option<Vec<EventPattern>>,
    pub upstream: Upstream,
    /// `allow_from`: the client addresses this route accepts (`None`: any).
    pub allow_from: Option<AllowList>,
    /// What a verified body must be, and what deduplicates it.
    pub kind: RouteKind,
    /// `spool`: whether verified deliveries are kept in the delivery spool.
    pub spool: SpoolMode,
    /// `require_headers`: headers every delivery must carry (values secret).
    pub require_headers: Vec<crate::auth::RequiredHeader>,
    /// `[route.oauth]`: the bearer token every delivery must carry.
    pub oauth: Option<crate::auth::OAuthRule>,
    /// `[route.reconcile]`: the route's reconciliation with Persona's Events API.
    pub reconcile: Option<ReconcileRule>,
}

/// A route's `kind`: Persona webhook events, or any signed body (Persona
/// Workflows' "Make HTTPS Request" steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// `kind = "event"` (the default): a JSON:API event, deduplicated on `data.id`.
    Event,
    /// `kind = "signature"`: any body. Deduplicated on the string or number at
    /// `id_pointer` (an RFC 6901 JSON pointer) when set, else on the signed
    /// request itself (its verified `t` and its body).
    Signature { id_pointer: Option<String> },
}

impl Route {
    pub fn allows(&self, event_type: &str) -> bool {
        match &self.events {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(event_type)),
        }
    }
}

/// Time a passthrough body has before `min_body_rate` applies.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// The validated configuration: what is fixed at start, and the policy a
/// SIGHUP reload swaps.
#[derive(Debug, Clone)]
pub struct Config {
    pub process: ProcessConfig,
    pub policy: PolicyConfig,
}

/// Everything a reload applies: the keys of the schema that are not restart-only.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub unmatched: Unmatched,
    /// `[admin] token`: a peer other than loopback may make the admin
    /// listener's state-changing calls with `Authorization: Bearer <token>`
    /// (`None`: only loopback may).
    pub admin_token: Option<Secret>,
    pub body_timeout: Duration,
    /// A request head must arrive whole within this, from its first byte
    /// (a connection's first request: from the connection's start).
    pub header_timeout: Duration,
    /// Open client connections, all peers.
    pub max_connections: usize,
    /// Open client connections from one TCP peer address; peers in
    /// `trusted_proxies` are exempt.
    pub max_connections_per_peer: usize,
    /// Request body bytes held at once, all requests together (see `budget`).
    pub max_buffered: u64,
    /// Request body bytes one client address holds at once.
    pub max_buffered_per_client: u64,
    /// Passthrough body bytes per second, after a grace ([`BODY_RATE_GRACE`]).
    pub min_body_rate: u64,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: AllowList,
    pub upstream: Upstream,
    pub replay: Replay,
    pub headers: TrustedHeaders,
    pub spool: Redelivery,
    pub routes: Vec<Route>,
}

impl Config {
    /// What is valid but probably a mistake (`check` prints these and exits
    /// 0; `run` logs them): each names its key, never a secret.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut w = cross::warnings(&self.policy.replay, &self.policy.routes);
        w.extend(spool::warnings(self));
        w
    }

    /// The route a request target falls under: for each of its readings (see
    /// [`path::readings`]) the most specific route covering it. `Ok(None)`:
    /// no reading is under any route. When two readings fall under different
    /// routes the target is [`RouteError::Ambiguous`]: the app could run
    /// either route's handler, and the two may have different secrets.
    pub fn route_for_target(&self, target: &[u8]) -> Result<Option<(usize, &Route)>, RouteError> {
        let mut found: Option<usize> = None;
        let mut ambiguous = false;
        path::any_reading(target, |reading| {
            let best = self
                .policy
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matcher.covers(reading))
                .max_by_key(|(_, r)| r.matcher.depth())
                .map(|(i, _)| i);
            match (found, best) {
                (_, None) => false,
                (None, Some(i)) => {
                    found = Some(i);
                    self.policy.routes.len() == 1
                }
                (Some(j), Some(i)) => {
                    ambiguous = i != j;
                    ambiguous
                }
            }
        })
        .map_err(RouteError::Path)?;
        if ambiguous {
            return Err(RouteError::Ambiguous);
        }
        Ok(found.map(|i| (i, &self.policy.routes[i])))
    }
}

/// Why a request target has no route decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Path(path::PathError),
    #[error("the target's readings fall under two routes")]
    Ambiguous,
    #[error("the target is in neither origin-form nor absolute-form")]
    Form,
}
