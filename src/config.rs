//! The route file: raw TOML structures, validation, and the typed [`Config`] the
//! rest of the program uses.
//!
//! Loading is two steps. `serde` + `toml` turn the file into `Raw*` structs
//! (unknown keys are errors). [`validate`] then converts every field into its
//! typed form, collecting *every* problem as a [`Problem`] naming the key and the
//! fix, so an operator sees all mistakes in one run instead of one per restart.
//! Secrets are resolved here too (`env:NAME`, `file:/path`, or a literal), so a
//! missing secret is a configuration error, never a runtime surprise.

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::path;

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener (health, readiness, metrics): loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Default upstream (the application).
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:3000";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_CAPACITY: u64 = 1_000_000;
pub const DEFAULT_INFLIGHT_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_KEY_PREFIX: &str = "persona-guard:";
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Whole-body deadline on a webhook route: a client trickling its body is cut off.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Each read of a new connection's request head must arrive within this.
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

// ---------------------------------------------------------------- raw file form

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    unmatched: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    replay: RawReplay,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    threads: Option<usize>,
    grace_period: Option<String>,
    body_timeout: Option<String>,
    idle_timeout: Option<String>,
    header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    address: Option<String>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    tls: Option<bool>,
    sni: Option<String>,
    verify: Option<bool>,
    ca_file: Option<String>,
    host_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    store: Option<String>,
    ttl: Option<String>,
    capacity: Option<u64>,
    redis_url: Option<String>,
    redis_password: Option<String>,
    redis_timeout: Option<String>,
    key_prefix: Option<String>,
    on_store_error: Option<String>,
    inflight_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    event_type: Option<String>,
    event_id: Option<String>,
    event_created_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<String>,
    secrets: Option<Vec<String>>,
    tolerance: Option<String>,
    max_body: Option<String>,
    events: Option<Vec<String>>,
    upstream: Option<String>,
}

// ---------------------------------------------------------------- typed form

/// What to do with a path under no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Forward,
    Deny,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A webhook secret. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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

/// Certificate and key (PEM files) of the public TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Replay {
    pub store: StoreKind,
    pub on_store_error: OnStoreError,
    pub ttl: Duration,
    pub capacity: u64,
    pub inflight_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct TrustedHeaders {
    pub event_type: HeaderName,
    pub event_id: HeaderName,
    pub event_created_at: HeaderName,
}

impl TrustedHeaders {
    /// The three names, lower-case with `-` (the form client headers are compared in).
    pub fn names(&self) -> [&HeaderName; 3] {
        [&self.event_type, &self.event_id, &self.event_created_at]
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// The path as written in the file (for logs and metrics labels).
    pub path: String,
    /// The normalised path used for matching.
    pub normalized: Vec<u8>,
    pub secrets: Vec<Secret>,
    pub tolerance: Duration,
    pub max_body: u64,
    /// `None`: every event type is forwarded.
    pub events: Option<Vec<EventPattern>>,
    pub upstream: Upstream,
}

impl Route {
    pub fn allows(&self, event_type: &str) -> bool {
        match &self.events {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(event_type)),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub unmatched: Unmatched,
    pub log_format: LogFormat,
    pub listen: SocketAddr,
    /// TLS on the public listener (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen_tls: Option<ListenTls>,
    pub admin: SocketAddr,
    /// CA bundle (PEM) trusted for upstream TLS instead of the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    pub threads: usize,
    pub grace_period: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bounds each read while a request head arrives on a new connection.
    pub header_timeout: Duration,
    pub upstream: Upstream,
    pub replay: Replay,
    pub headers: TrustedHeaders,
    pub routes: Vec<Route>,
}

impl Config {
    /// The most specific route whose path covers the normalised `path`.
    pub fn route_for(&self, normalized: &[u8]) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| path::is_within(normalized, &r.normalized))
            .max_by_key(|(_, r)| r.normalized.len())
    }
}

// ---------------------------------------------------------------- errors

/// One thing wrong with the file: the key and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}: {}", self.file.display(), p.key, p.message)?;
        }
        Ok(())
    }
}

/// A one-line description of a TOML syntax error, with its line, that never
/// quotes the file (it may hold literal secrets).
fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let mut message = e.message().trim().to_string();
    if message.is_empty() {
        message = "invalid TOML (a control character or malformed syntax)".to_string();
    }
    if let Some(span) = e.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        message.push_str(&format!(" (line {line})"));
    }
    Problem {
        key: "(syntax)".into(),
        message,
    }
}

/// Reads, parses and validates a route file, resolving every secret.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        problems: vec![Problem {
            key: key.to_string(),
            message,
        }],
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail("(file)", format!("cannot read the file: {e}")))?;
    let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        problems: vec![syntax_problem(&text, &e)],
    })?;
    validate(raw, file.parent().unwrap_or(Path::new(".")), &EnvSource).map_err(|problems| {
        ConfigError {
            file: file.to_path_buf(),
            problems,
        }
    })
}

/// What the loader reads from the outside world: `env:` secrets and name
/// resolution (the process environment and the system resolver, or fakes in
/// tests and fuzzing).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// `host:port` or `ip:port` to one socket address.
    fn resolve(&self, addr: &str) -> Result<SocketAddr, String> {
        resolve(addr)
    }
}

/// The process environment.
pub struct EnvSource;

impl Env for EnvSource {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Parses TOML text and validates it (for tests and callers with text in hand).
pub fn from_str(text: &str, env: &dyn Env) -> Result<Config, Vec<Problem>> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| vec![syntax_problem(text, &e)])?;
    validate(raw, Path::new("."), env)
}

/// Collects problems while converting fields.
struct Check<'e> {
    problems: Vec<Problem>,
    env: &'e dyn Env,
}

impl Check<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// One of a fixed set of words (`"forward"`, `"deny"`, ...).
    fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<&str>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(v) = value else { return default };
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == v) {
            return *t;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.problem(key, format!("`{v}` is not one of {}", names.join(", ")));
        default
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    key,
                    format!("`{v}` is not a duration ({e}); write e.g. \"300ms\", \"30s\", \"5m\""),
                );
                default
            }
        }
    }

    fn address(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let v = value.unwrap_or(default);
        match self.env.resolve(v) {
            Ok(a) => a,
            Err(msg) => {
                self.problem(key, msg);
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    /// `[http[s]://]host:port` plus the TLS options of `raw`.
    fn upstream(
        &mut self,
        key: &str,
        value: &str,
        raw: &RawUpstream,
        connect_timeout: Duration,
        read_timeout: Duration,
        host_header: HostHeader,
    ) -> Upstream {
        let (scheme_tls, rest) = if let Some(r) = value.strip_prefix("https://") {
            (Some(true), r)
        } else if let Some(r) = value.strip_prefix("http://") {
            (Some(false), r)
        } else {
            (None, value)
        };
        let rest = rest.trim_end_matches('/');
        let tls = match (scheme_tls, raw.tls) {
            (Some(a), Some(b)) if a != b => {
                self.problem(key, "the scheme and `tls` disagree; keep one");
                a
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => false,
        };
        let has_port = rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !rest.ends_with(']');
        let authority = if has_port || scheme_tls.is_none() {
            rest.to_string()
        } else {
            format!("{rest}:{}", if tls { 443 } else { 80 })
        };
        let address = self.address(key, Some(&authority), DEFAULT_UPSTREAM);
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&authority)
            .to_string();
        Upstream {
            address,
            authority,
            connect_timeout,
            read_timeout,
            tls,
            sni: raw.sni.clone().unwrap_or(host),
            verify: raw.verify.unwrap_or(true),
            host_header,
        }
    }

    fn header_name(&mut self, key: &str, value: Option<&str>, default: &str) -> HeaderName {
        let v = value.unwrap_or(default);
        match HeaderName::from_bytes(v.as_bytes()) {
            Ok(h) => canonical_header(&h),
            Err(_) => {
                self.problem(
                    key,
                    format!("`{v}` is not a valid HTTP header name (letters, digits and `-`)"),
                );
                HeaderName::from_static("x-invalid")
            }
        }
    }
}

/// A header name compared the way frameworks do: lower-case, `_` as `-`.
pub fn canonical_header(name: &HeaderName) -> HeaderName {
    let s = name.as_str().replace('_', "-");
    HeaderName::from_bytes(s.as_bytes()).unwrap_or_else(|_| name.clone())
}

/// `host:port` or `ip:port` to one socket address (resolved once, at load).
fn resolve(v: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    match v.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("`{v}` resolves to no address")),
        Err(e) => Err(format!(
            "`{v}` is not an address with a port, like \"127.0.0.1:3000\" ({e})"
        )),
    }
}

fn resolve_secret(spec: &str, base: &Path, env: &dyn Env) -> Result<Secret, String> {
    let bytes = if let Some(name) = spec.strip_prefix("env:") {
        match env.var(name) {
            Some(v) => v.into_bytes(),
            None => {
                return Err(format!(
                    "environment variable `{name}` is not set; export it or use `file:/path`"
                ));
            }
        }
    } else if let Some(p) = spec.strip_prefix("file:") {
        let path = base.join(p);
        match std::fs::read(&path) {
            Ok(mut b) => {
                while matches!(b.last(), Some(b'\n' | b'\r')) {
                    b.pop();
                }
                b
            }
            Err(e) => return Err(format!("cannot read secret file `{}`: {e}", path.display())),
        }
    } else {
        spec.as_bytes().to_vec()
    };
    if bytes.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(Secret(bytes))
}

fn validate(raw: RawConfig, base: &Path, env: &dyn Env) -> Result<Config, Vec<Problem>> {
    let mut c = Check {
        problems: Vec::new(),
        env,
    };

    let unmatched = c.choice(
        "unmatched",
        raw.unmatched.as_deref(),
        &[("forward", Unmatched::Forward), ("deny", Unmatched::Deny)],
        Unmatched::Forward,
    );
    let log_format = c.choice(
        "log_format",
        raw.log_format.as_deref(),
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        LogFormat::Text,
    );
    let listen = c.address(
        "listen.address",
        raw.listen.address.as_deref(),
        DEFAULT_LISTEN,
    );
    let admin = c.address("admin.address", raw.admin.address.as_deref(), DEFAULT_ADMIN);
    if listen == admin && listen.port() != 0 {
        c.problem(
            "admin.address",
            "must differ from listen.address: the admin port is never public",
        );
    }

    let threads = match raw.server.threads {
        Some(0) => {
            c.problem("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let grace_period = c.duration(
        "server.grace_period",
        raw.server.grace_period.as_deref(),
        DEFAULT_GRACE_PERIOD,
    );
    let body_timeout = c.duration(
        "server.body_timeout",
        raw.server.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
    );

    let idle_timeout = c.duration(
        "server.idle_timeout",
        raw.server.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
    );
    let header_timeout = c.duration(
        "server.header_timeout",
        raw.server.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
    );
    if idle_timeout < Duration::from_secs(1) {
        c.problem("server.idle_timeout", "must be at least 1s");
    }
    let connect_timeout = c.duration(
        "upstream.connect_timeout",
        raw.upstream.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
    );
    let read_timeout = c.duration(
        "upstream.read_timeout",
        raw.upstream.read_timeout.as_deref(),
        DEFAULT_READ_TIMEOUT,
    );
    let host_header = c.choice(
        "upstream.host_header",
        raw.upstream.host_header.as_deref(),
        &[
            ("keep", HostHeader::Keep),
            ("upstream", HostHeader::Upstream),
        ],
        HostHeader::Keep,
    );
    let upstream = c.upstream(
        "upstream.address",
        raw.upstream.address.as_deref().unwrap_or(DEFAULT_UPSTREAM),
        &raw.upstream,
        connect_timeout,
        read_timeout,
        host_header,
    );
    let upstream_ca_file = raw.upstream.ca_file.as_deref().map(|p| {
        let path = base.join(p);
        if let Err(e) = std::fs::read(&path) {
            c.problem(
                "upstream.ca_file",
                format!("cannot read `{}`: {e}", path.display()),
            );
        }
        path
    });
    let listen_tls = raw.listen.tls.as_ref().and_then(|t| {
        let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
            c.problem("listen.tls", "needs both cert and key (PEM file paths)");
            return None;
        };
        let tls = ListenTls {
            cert: base.join(cert),
            key: base.join(key),
        };
        if let Err(e) = crate::tls::load_certified_key(&tls) {
            c.problem("listen.tls", e);
        }
        Some(tls)
    });

    let store = match raw.replay.store.as_deref() {
        None | Some("memory") => {
            for (key, set) in [
                ("replay.redis_url", raw.replay.redis_url.is_some()),
                ("replay.redis_password", raw.replay.redis_password.is_some()),
                ("replay.redis_timeout", raw.replay.redis_timeout.is_some()),
                ("replay.key_prefix", raw.replay.key_prefix.is_some()),
                ("replay.on_store_error", raw.replay.on_store_error.is_some()),
            ] {
                if set {
                    c.problem(key, "only applies to store = \"redis\"");
                }
            }
            StoreKind::Memory
        }
        Some("redis") => {
            let url = match raw.replay.redis_url.as_deref() {
                None => {
                    c.problem(
                        "replay.redis_url",
                        "is required with store = \"redis\", e.g. \"redis://127.0.0.1:6379/0\"",
                    );
                    String::new()
                }
                Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => {
                    c.problem(
                        "replay.redis_url",
                        "must start with redis:// or rediss:// (the URL is not repeated here: it may hold a password)",
                    );
                    String::new()
                }
                Some(u) => {
                    if redis::Client::open(u).is_err() {
                        c.problem(
                            "replay.redis_url",
                            "is not a valid Redis URL (the URL is not repeated here: it may hold a password)",
                        );
                    }
                    u.to_string()
                }
            };
            let password = raw.replay.redis_password.as_deref().and_then(|spec| {
                resolve_secret(spec, base, env)
                    .map_err(|msg| c.problem("replay.redis_password", msg))
                    .ok()
            });
            let timeout = c.duration(
                "replay.redis_timeout",
                raw.replay.redis_timeout.as_deref(),
                DEFAULT_REDIS_TIMEOUT,
            );
            let key_prefix = raw
                .replay
                .key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
            StoreKind::Redis(RedisSettings {
                url,
                password,
                key_prefix,
                timeout,
            })
        }
        Some(other) => {
            c.problem(
                "replay.store",
                format!("`{other}` is not one of \"memory\", \"redis\""),
            );
            StoreKind::Memory
        }
    };
    let on_store_error = c.choice(
        "replay.on_store_error",
        raw.replay.on_store_error.as_deref(),
        &[
            ("reject", OnStoreError::Reject),
            ("allow", OnStoreError::Allow),
        ],
        OnStoreError::Reject,
    );
    let ttl = c.duration("replay.ttl", raw.replay.ttl.as_deref(), DEFAULT_TTL);
    let capacity = match raw.replay.capacity {
        Some(0) => {
            c.problem("replay.capacity", "must be at least 1");
            1
        }
        Some(n) => n,
        None => DEFAULT_CAPACITY,
    };
    let inflight_ttl = c.duration(
        "replay.inflight_ttl",
        raw.replay.inflight_ttl.as_deref(),
        DEFAULT_INFLIGHT_TTL,
    );

    let headers = TrustedHeaders {
        event_type: c.header_name(
            "headers.event_type",
            raw.headers.event_type.as_deref(),
            DEFAULT_EVENT_TYPE_HEADER,
        ),
        event_id: c.header_name(
            "headers.event_id",
            raw.headers.event_id.as_deref(),
            DEFAULT_EVENT_ID_HEADER,
        ),
        event_created_at: c.header_name(
            "headers.event_created_at",
            raw.headers.event_created_at.as_deref(),
            DEFAULT_EVENT_CREATED_AT_HEADER,
        ),
    };
    let distinct: HashSet<_> = headers.names().into_iter().collect();
    if distinct.len() != 3 {
        c.problem("headers", "the three trusted header names must differ");
    }
    for (key, name) in [
        ("headers.event_type", &headers.event_type),
        ("headers.event_id", &headers.event_id),
        ("headers.event_created_at", &headers.event_created_at),
    ] {
        if is_reserved_header(name) {
            c.problem(
                key,
                format!("`{name}` is a protocol header; choose a name of your own such as X-Persona-Event-Id"),
            );
        }
    }

    if raw.route.is_empty() {
        c.problem(
            "route",
            "no [[route]] is configured; add one with path and secrets",
        );
    }
    let mut routes = Vec::with_capacity(raw.route.len());
    let mut seen_paths: Vec<(Vec<u8>, usize)> = Vec::new();
    for (i, r) in raw.route.into_iter().enumerate() {
        let k = |field: &str| format!("route[{i}].{field}");
        let (path_str, normalized) = match r.path.as_deref() {
            None => {
                c.problem(k("path"), "is required, e.g. \"/webhooks/persona\"");
                (String::new(), b"/".to_vec())
            }
            Some(p) if !p.starts_with('/') => {
                c.problem(k("path"), format!("`{p}` must start with `/`"));
                (p.to_string(), b"/".to_vec())
            }
            Some(p) => match path::normalize(p.as_bytes()) {
                Ok(n) => (p.to_string(), n),
                Err(e) => {
                    c.problem(k("path"), format!("`{p}`: {e}"));
                    (p.to_string(), b"/".to_vec())
                }
            },
        };
        if let Some((_, j)) = seen_paths.iter().find(|(n, _)| *n == normalized)
            && r.path.is_some()
        {
            c.problem(
                k("path"),
                format!("the same path as route[{j}]; merge the two routes"),
            );
        }
        seen_paths.push((normalized.clone(), i));

        let mut secrets = Vec::new();
        match r.secrets {
            None => c.problem(
                k("secrets"),
                "is required: a list such as [\"env:PERSONA_WEBHOOK_SECRET\"]",
            ),
            Some(list) if list.is_empty() => {
                c.problem(k("secrets"), "must list at least one secret")
            }
            Some(list) => {
                for (j, spec) in list.iter().enumerate() {
                    match resolve_secret(spec, base, env) {
                        Ok(s) => secrets.push(s),
                        Err(msg) => c.problem(format!("route[{i}].secrets[{j}]"), msg),
                    }
                }
            }
        }
        let tolerance = c.duration(&k("tolerance"), r.tolerance.as_deref(), DEFAULT_TOLERANCE);
        let max_body = match r.max_body.as_deref() {
            None => DEFAULT_MAX_BODY,
            Some(v) => match v.parse::<bytesize::ByteSize>() {
                Ok(b) if b.as_u64() == 0 => {
                    c.problem(k("max_body"), "must be greater than zero");
                    DEFAULT_MAX_BODY
                }
                Ok(b) if b.as_u64() > MAX_MAX_BODY => {
                    c.problem(
                        k("max_body"),
                        format!("`{v}` is over the limit of 64MiB (bodies are held in memory)"),
                    );
                    DEFAULT_MAX_BODY
                }
                Ok(b) => b.as_u64(),
                Err(e) => {
                    c.problem(
                        k("max_body"),
                        format!("`{v}` is not a size ({e}); write e.g. \"64KiB\", \"1MiB\""),
                    );
                    DEFAULT_MAX_BODY
                }
            },
        };
        let events = r.events.map(|list| {
            if list.is_empty() {
                c.problem(
                    k("events"),
                    "an empty list would ignore every event; remove the key to allow all",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(j, e)| match parse_pattern(e) {
                    Ok(p) => Some(p),
                    Err(msg) => {
                        c.problem(format!("route[{i}].events[{j}]"), msg);
                        None
                    }
                })
                .collect()
        });
        let route_upstream = match r.upstream.as_deref() {
            None => upstream.clone(),
            Some(v) => c.upstream(
                &k("upstream"),
                v,
                &RawUpstream::default(),
                connect_timeout,
                read_timeout,
                host_header,
            ),
        };
        routes.push(Route {
            path: path_str,
            normalized,
            secrets,
            tolerance,
            max_body,
            events,
            upstream: route_upstream,
        });
    }

    if let Some(max_tol) = routes.iter().map(|r| r.tolerance).max()
        && ttl < max_tol * 2
    {
        c.problem(
            "replay.ttl",
            format!(
                "{} is less than twice the largest route tolerance ({}); set ttl to at least {}",
                humantime::format_duration(ttl),
                humantime::format_duration(max_tol),
                humantime::format_duration(max_tol * 2)
            ),
        );
    }
    if inflight_ttl < upstream.connect_timeout + upstream.read_timeout {
        c.problem(
            "replay.inflight_ttl",
            format!(
                "{} is shorter than upstream.connect_timeout + upstream.read_timeout; a slow delivery could outlive its in-flight mark",
                humantime::format_duration(inflight_ttl)
            ),
        );
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        unmatched,
        log_format,
        listen,
        listen_tls,
        admin,
        upstream_ca_file,
        threads,
        grace_period,
        body_timeout,
        idle_timeout,
        header_timeout,
        upstream,
        replay: Replay {
            store,
            on_store_error,
            ttl,
            capacity,
            inflight_ttl,
        },
        headers,
        routes,
    })
}

fn parse_pattern(e: &str) -> Result<EventPattern, String> {
    if e.is_empty() {
        return Err("an event name cannot be empty".into());
    }
    match e.find('*') {
        None => Ok(EventPattern::Exact(e.to_string())),
        Some(pos) if pos == e.len() - 1 => Ok(EventPattern::Prefix(e[..pos].to_string())),
        Some(_) => Err(format!(
            "`{e}`: `*` is only allowed at the end, as in \"inquiry.*\""
        )),
    }
}

fn is_reserved_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "content-type"
            | "persona-signature"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
    }

    fn env() -> MapEnv {
        MapEnv(HashMap::from([("SECRET", "wbhsec_abc")]))
    }

    const MINIMAL: &str = r#"
[[route]]
path = "/webhooks/persona"
secrets = ["env:SECRET"]
"#;

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = from_str(MINIMAL, &env()).unwrap();
        assert_eq!(c.unmatched, Unmatched::Forward);
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.upstream.address, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.upstream.read_timeout, DEFAULT_READ_TIMEOUT);
        assert_eq!(c.replay.ttl, DEFAULT_TTL);
        assert_eq!(c.replay.capacity, 1_000_000);
        assert_eq!(c.replay.inflight_ttl, Duration::from_secs(60));
        let r = &c.routes[0];
        assert_eq!(r.secrets, vec![Secret::new("wbhsec_abc")]);
        assert_eq!(r.tolerance, Duration::from_secs(300));
        assert_eq!(r.max_body, 1024 * 1024);
        assert_eq!(c.headers.event_id.as_str(), "x-persona-event-id");
    }

    #[test]
    fn units_are_parsed() {
        let text = r#"
[replay]
ttl = "1h"
[[route]]
path = "/a"
secrets = ["lit"]
tolerance = "90s"
max_body = "64KiB"
"#;
        let c = from_str(text, &env()).unwrap();
        assert_eq!(c.replay.ttl, Duration::from_secs(3600));
        assert_eq!(c.routes[0].tolerance, Duration::from_secs(90));
        assert_eq!(c.routes[0].max_body, 64 * 1024);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
unmatched = "maybe"
[upstream]
read_timeout = "soon"
[replay]
ttl = "5m"
[[route]]
path = "/a"
secrets = ["env:MISSING", "file:/nonexistent/secret"]
tolerance = "5m"
max_body = "lots"
events = ["inq*uiry"]
"#;
        let problems = from_str(text, &env()).unwrap_err();
        let k = keys(&problems);
        for expected in [
            "unmatched",
            "upstream.read_timeout",
            "replay.ttl",
            "route[0].secrets[0]",
            "route[0].secrets[1]",
            "route[0].max_body",
            "route[0].events[0]",
        ] {
            assert!(k.contains(&expected), "{expected} missing from {k:?}");
        }
        let ttl = problems.iter().find(|p| p.key == "replay.ttl").unwrap();
        assert!(ttl.message.contains("10m"), "{}", ttl.message);
        let missing = problems
            .iter()
            .find(|p| p.key == "route[0].secrets[0]")
            .unwrap();
        assert!(missing.message.contains("MISSING"));
    }

    #[test]
    fn ttl_exactly_twice_tolerance_is_accepted() {
        let text = r#"
[replay]
ttl = "10m"
[[route]]
path = "/a"
secrets = ["x"]
tolerance = "5m"
"#;
        assert!(from_str(text, &env()).is_ok());
    }

    #[test]
    fn redis_store_settings_are_validated_and_the_url_never_echoed() {
        let text = r#"
[replay]
store = "redis"
redis_url = "redis://:hunter2@127.0.0.1:6379/0"
redis_password = "env:SECRET"
on_store_error = "allow"
redis_timeout = "250ms"
[[route]]
path = "/a"
secrets = ["x"]
"#;
        let c = from_str(text, &env()).unwrap();
        assert_eq!(c.replay.on_store_error, OnStoreError::Allow);
        let StoreKind::Redis(r) = &c.replay.store else {
            panic!("redis expected")
        };
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert_eq!(r.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(r.password.as_ref().unwrap().expose(), b"wbhsec_abc");
        assert!(!format!("{c:?}").contains("hunter2"));

        let bad = text
            .replace("redis://:hunter2@", "http://:hunter2@")
            .replace("allow", "sometimes");
        let problems = from_str(&bad, &env()).unwrap_err();
        assert_eq!(
            keys(&problems),
            vec!["replay.redis_url", "replay.on_store_error"]
        );
        assert!(problems.iter().all(|p| !p.message.contains("hunter2")));

        let memory_with_redis_keys =
            "[replay]\nredis_url = \"redis://x\"\n[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";
        let problems = from_str(memory_with_redis_keys, &env()).unwrap_err();
        assert_eq!(keys(&problems), vec!["replay.redis_url"]);
    }

    #[test]
    fn upstream_addresses_schemes_and_tls_options() {
        let text = r#"
[upstream]
address = "https://localhost:8443"
ca_file = "Cargo.toml"
host_header = "upstream"
[[route]]
path = "/a"
secrets = ["x"]
upstream = "http://127.0.0.1"
[[route]]
path = "/b"
secrets = ["x"]
upstream = "https://127.0.0.1"
"#;
        let c = from_str(text, &env()).unwrap();
        assert!(c.upstream.tls);
        assert_eq!(c.upstream.sni, "localhost");
        assert_eq!(c.upstream.address.port(), 8443);
        assert_eq!(c.upstream.authority, "localhost:8443");
        assert_eq!(c.upstream.host_header, HostHeader::Upstream);
        assert!(c.upstream.verify);
        assert!(c.upstream_ca_file.is_some());
        let a = &c.routes[0].upstream;
        assert!(!a.tls);
        assert_eq!(a.address, "127.0.0.1:80".parse().unwrap());
        let b = &c.routes[1].upstream;
        assert!(b.tls);
        assert_eq!(b.address, "127.0.0.1:443".parse().unwrap());

        let bad = r#"
[listen]
tls = { cert = "/nonexistent/cert.pem" }
[upstream]
address = "http://127.0.0.1:3000"
tls = true
ca_file = "/nonexistent/ca.pem"
host_header = "client"
[[route]]
path = "/a"
secrets = ["x"]
"#;
        let problems = from_str(bad, &env()).unwrap_err();
        assert_eq!(
            keys(&problems),
            vec![
                "upstream.host_header",
                "upstream.address",
                "upstream.ca_file",
                "listen.tls"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let problems = from_str(
            "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\ntolerence = \"5m\"\n",
            &env(),
        )
        .unwrap_err();
        assert!(problems[0].message.contains("tolerence"), "{problems:?}");
    }

    #[test]
    fn no_route_is_an_error() {
        let problems = from_str("", &env()).unwrap_err();
        assert_eq!(keys(&problems), vec!["route"]);
    }

    #[test]
    fn secret_file_trailing_newline_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "wbhsec_file\n").unwrap();
        let text = format!(
            "[[route]]\npath = \"/a\"\nsecrets = [\"file:{}\"]\n",
            p.display()
        );
        let c = from_str(&text, &env()).unwrap();
        assert_eq!(c.routes[0].secrets[0].expose(), b"wbhsec_file");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = from_str(MINIMAL, &env()).unwrap();
        assert!(!format!("{c:?}").contains("wbhsec_abc"));
    }

    #[test]
    fn duplicate_route_paths_and_bad_headers_are_rejected() {
        let text = r#"
[headers]
event_id = "Content-Length"
[[route]]
path = "/a/"
secrets = ["x"]
[[route]]
path = "/A"
secrets = ["y"]
"#;
        let problems = from_str(text, &env()).unwrap_err();
        let k = keys(&problems);
        assert!(k.contains(&"route[1].path"), "{k:?}");
        assert!(k.contains(&"headers.event_id"), "{k:?}");
    }

    #[test]
    fn most_specific_route_wins_and_patterns_match() {
        let text = r#"
[[route]]
path = "/hooks"
secrets = ["x"]
[[route]]
path = "/hooks/persona"
secrets = ["y"]
events = ["inquiry.*", "verification.passed"]
"#;
        let c = from_str(text, &env()).unwrap();
        let (i, r) = c.route_for(b"/hooks/persona/x").unwrap();
        assert_eq!(i, 1);
        assert!(r.allows("inquiry.approved"));
        assert!(r.allows("verification.passed"));
        assert!(!r.allows("verification.failed"));
        assert_eq!(c.route_for(b"/hooks/other").unwrap().0, 0);
        assert!(c.route_for(b"/other").is_none());
    }

    /// Found by the `config_load` fuzz target: a control character in a comment
    /// made toml report an error with an empty message.
    #[test]
    fn a_syntax_error_always_says_something() {
        let text = "# a comment with a control byte \u{8}\u{0} here\n[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "(syntax)");
        assert!(!p[0].message.is_empty(), "{p:?}");
        assert!(p[0].message.contains("line 1"), "{p:?}");
    }
}
