//! The route file: raw TOML structures, validation, and the typed [`Config`] the
//! rest of the program uses.
//!
//! Loading is two steps. `serde` + `toml` turn the file into `Raw*` structs
//! (unknown keys are errors). [`validate`] then converts every field into its
//! typed form, collecting *every* problem as a [`Problem`] naming the key and the
//! fix, so an operator sees all mistakes in one run instead of one per restart.
//! Secrets are resolved here too (`env:NAME`, `file:/path`, or a literal), so a
//! missing secret is a configuration error, never a runtime surprise.
//!
//! # Error messages never quote the file
//!
//! A secret may be written in the wrong place (`secrets = "wbhsec_…"`, pasted as
//! a key, into `redis_url`, with a stray quote), and the messages are printed by
//! `check`, at start and in the SIGHUP log. So no message repeats a value or a
//! key from the file; each names the key path (from the schema's own names and
//! list indices), the line, and what is expected or allowed. Three layers keep
//! it so:
//!
//! - type errors, unknown keys and the like: `safe_de` hands serde an error
//!   type of its own and builds the message from the error's *structure* (the
//!   kind of value found, what our type expects, the schema's allowed names);
//!   whatever serde would have quoted is never formatted at all;
//! - TOML syntax errors: `syntax_problem` rebuilds the message from an
//!   allow-list of the parser's fixed phrases and grammar tokens, and drops
//!   everything else (a duplicate key's name, say);
//! - validation: `Check::problem` takes only `&'static str`; the few messages
//!   with computed parts (durations we parsed, route indices) go through
//!   `Check::problem_with`, and none interpolates text from the file. The one
//!   exception is an `env:` variable that is not set: its name is shown when it
//!   looks like a conventional variable name (`PERSONA_WEBHOOK_SECRET`), which a
//!   pasted secret does not (see `looks_like_env_name`).

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::path;

mod safe_de;

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
/// Default `[server] max_buffered`: webhook body bytes held at once.
pub const DEFAULT_MAX_BUFFERED: u64 = 64 * 1024 * 1024;

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
    max_buffered: Option<String>,
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

/// Certificate and key (PEM files) of the public TLS listener; defined by
/// `tls`, which takes paths rather than configuration types.
pub use crate::tls::ListenTls;

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
    /// Webhook body bytes held at once, all requests together (see `budget`).
    pub max_buffered: u64,
    pub upstream: Upstream,
    pub replay: Replay,
    pub headers: TrustedHeaders,
    pub routes: Vec<Route>,
}

impl Config {
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
                    self.routes.len() == 1
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
        Ok(found.map(|i| (i, &self.routes[i])))
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

/// 1-based line and column of byte offset `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let bytes = &text.as_bytes()[..at.min(text.len())];
    let line_start = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line = bytes.iter().filter(|b| **b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&bytes[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The parser's context labels (`invalid {label}`), from `toml_edit`'s grammar.
const SYNTAX_LABELS: &[&str] = &[
    "key",
    "string",
    "basic string",
    "literal string",
    "multiline basic string",
    "multiline literal string",
    "escape sequence",
    "unicode 4-digit hex code",
    "unicode 8-digit hex code",
    "integer",
    "hexadecimal integer",
    "octal integer",
    "binary integer",
    "floating-point number",
    "date-time",
    "time",
    "time offset",
    "array",
    "inline table",
    "table header",
];

/// The parser's fixed descriptions in an `expected ...` list.
const SYNTAX_DESCRIPTIONS: &[&str] = &["digit", "leading digit", "newline"];

/// The parser's fixed messages that need no rewording.
const SYNTAX_CAUSES: &[&str] = &["value is out of range", "recursion limit exceeded"];

/// One item of the parser's `expected` list, if it is grammar: a fixed
/// description, or a quoted token that is one character or up to three
/// punctuation characters (`=`, `]]`, `"""`).
fn expected_token(item: &str) -> Option<String> {
    if let Some(d) = SYNTAX_DESCRIPTIONS.iter().find(|d| **d == item) {
        return Some((*d).to_string());
    }
    let token = item.strip_prefix('`')?.strip_suffix('`')?;
    let n = token.chars().count();
    let grammar = n == 1 || (n <= 3 && token.chars().all(|c| c.is_ascii_punctuation()));
    grammar.then(|| format!("`{token}`"))
}

/// A TOML syntax error (or any error the TOML layer made itself, rather than
/// [`safe_de`]) as a problem with its line and column that never quotes the
/// file. The parser's message may hold text from the file (a duplicate key's
/// name), so it is not passed on: it is rebuilt from an allow-list of the
/// parser's fixed phrases (`invalid basic string`), grammar tokens (`expected
/// `"``) and rewordings; anything unrecognised is dropped.
fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let mut parts: Vec<String> = Vec::new();
    for line in e.message().lines().map(str::trim) {
        if let Some(label) = line.strip_prefix("invalid ") {
            if let Some(l) = SYNTAX_LABELS.iter().find(|l| **l == label) {
                parts.push(format!("invalid {l}"));
            }
        } else if let Some(list) = line.strip_prefix("expected ") {
            let items: Vec<String> = list.split(", ").filter_map(expected_token).collect();
            if !items.is_empty() {
                parts.push(format!("expected {}", items.join(", ")));
            }
        } else if line.starts_with("duplicate key") {
            parts.push(
                "a key or table is defined twice (its name is not repeated here)".to_string(),
            );
        } else if line.starts_with("dotted key") {
            parts.push("a dotted key extends a value that is not a table".to_string());
        } else if let Some(c) = SYNTAX_CAUSES.iter().find(|c| **c == line) {
            parts.push((*c).to_string());
        }
    }
    if parts.is_empty() {
        parts.push("invalid TOML (a control character or malformed syntax)".to_string());
    }
    let mut message = parts.join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            message.push_str(&format!(
                " (line {line}, column {column}; the text is not repeated here)"
            ));
        }
        None => message.push_str(" (the text is not repeated here)"),
    }
    Problem {
        key: "(syntax)".into(),
        message,
    }
}

/// Parses the TOML text into the raw structs; errors never quote the text (see
/// [`safe_de`] and [`syntax_problem`]).
fn parse(text: &str) -> Result<RawConfig, Problem> {
    let ctx = safe_de::Ctx::default();
    let de = safe_de::Wrap::new(toml::Deserializer::new(text), &ctx);
    RawConfig::deserialize(de).map_err(|e| match ctx.path_of(e.message()) {
        Some(path) => {
            let mut message = e.message().to_string();
            if let Some(span) = e.span() {
                message.push_str(&format!(" (line {})", position(text, span.start).0));
            }
            Problem {
                key: if path.is_empty() {
                    "(top level)".into()
                } else {
                    path
                },
                message,
            }
        }
        None => syntax_problem(text, &e),
    })
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
    let raw = parse(&text).map_err(|p| ConfigError {
        file: file.to_path_buf(),
        problems: vec![p],
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

    /// `host:port` or `ip:port` to one socket address. The error message is
    /// shown to the operator: it must not repeat `addr` (a secret may have
    /// been written there).
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
    let raw = parse(text).map_err(|p| vec![p])?;
    validate(raw, Path::new("."), env)
}

/// Collects problems while converting fields.
struct Check<'e> {
    problems: Vec<Problem>,
    env: &'e dyn Env,
}

impl Check<'_> {
    /// Records a problem. The message is fixed text: no value from the file.
    fn problem(&mut self, key: impl Into<String>, message: &'static str) {
        self.problem_with(key, message.to_string());
    }

    /// Records a problem whose message has computed parts: numbers, durations
    /// we parsed, route indices, our own names; never text from the file.
    fn problem_with(&mut self, key: impl Into<String>, message: String) {
        self.problems.push(Problem {
            key: key.into(),
            message,
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
        self.problem_with(
            key,
            format!(
                "is not one of {} (the value is not repeated here)",
                names.join(", ")
            ),
        );
        default
    }

    /// A size such as "64KiB" or "1MiB", greater than zero and at most
    /// [`MAX_MAX_BODY`] (bodies are held in memory).
    fn size(&mut self, key: &str, value: Option<&str>, default: u64) -> u64 {
        let Some(v) = value else { return default };
        match v.parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() == 0 => {
                self.problem(key, "must be greater than zero");
                default
            }
            Ok(b) if b.as_u64() > MAX_MAX_BODY => {
                self.problem(
                    key,
                    "is over the limit of 64MiB (bodies are held in memory)",
                );
                default
            }
            Ok(b) => b.as_u64(),
            // Not `e`: bytesize's message quotes the input.
            Err(_) => {
                self.problem(
                    key,
                    "is not a size (the value is not repeated here); write e.g. \"64KiB\", \"1MiB\"",
                );
                default
            }
        }
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                default
            }
            Ok(d) => d,
            // Not `e`: humantime's message quotes the unit it did not know.
            Err(_) => {
                self.problem(
                    key,
                    "is not a duration (the value is not repeated here); write e.g. \"300ms\", \"30s\", \"5m\"",
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
                self.problem_with(key, msg);
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
                    "is not a valid HTTP header name (the value is not repeated here); use letters, digits and `-`",
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
/// The messages never repeat the address.
fn resolve(v: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    let fix =
        "write an address with a port, like \"127.0.0.1:3000\" (the value is not repeated here)";
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(format!("has no port; {fix}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("has no valid port (0 to 65535); {fix}"));
    }
    if host.is_empty() {
        return Err(format!("has no host; {fix}"));
    }
    match v.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("resolves to no address; {fix}")),
        Err(_) => Err(format!(
            "is not an IP address and does not resolve as a host name; {fix}"
        )),
    }
}

/// Whether an `env:` name may be shown in a message: a conventional variable
/// name (`PERSONA_WEBHOOK_SECRET`: upper-case words of at most 12 letters and
/// digits joined by `_`). A secret pasted after `env:` is not one (Persona's
/// are lower-case `wbhsec_…`; random tokens are long runs), so it is not shown.
fn looks_like_env_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.split('_').all(|w| {
            !w.is_empty()
                && w.len() <= 12
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
}

/// The kind of an I/O error, never its text (fixed words: "entity not found").
fn io_kind(e: &std::io::Error) -> String {
    e.kind().to_string()
}

fn resolve_secret(spec: &str, base: &Path, env: &dyn Env) -> Result<Secret, String> {
    let bytes = if let Some(name) = spec.strip_prefix("env:") {
        match env.var(name) {
            Some(v) => v.into_bytes(),
            None if looks_like_env_name(name) => {
                return Err(format!(
                    "environment variable `{name}` is not set; export it or use `file:/path`"
                ));
            }
            None => {
                return Err("the environment variable after `env:` is not set (its name is not repeated here); export it or use `file:/path`".into());
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
            Err(e) => {
                return Err(format!(
                    "cannot read the file after `file:` ({}; the path is not repeated here)",
                    io_kind(&e)
                ));
            }
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
    let max_buffered = c.size(
        "server.max_buffered",
        raw.server.max_buffered.as_deref(),
        DEFAULT_MAX_BUFFERED,
    );
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
            c.problem_with(
                "upstream.ca_file",
                format!(
                    "cannot read the file ({}; the path is not repeated here)",
                    io_kind(&e)
                ),
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
        let mut readable = true;
        for (k, path) in [("listen.tls.cert", &tls.cert), ("listen.tls.key", &tls.key)] {
            if let Err(e) = std::fs::read(path) {
                readable = false;
                c.problem_with(
                    k,
                    format!(
                        "cannot read the file ({}; the path is not repeated here)",
                        io_kind(&e)
                    ),
                );
            }
        }
        if readable && let Err(e) = crate::tls::load_certified_key(&tls) {
            // The loader's message names the files; only its gist is passed on.
            c.problem("listen.tls", tls_gist(&e));
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
                    .map_err(|msg| c.problem_with("replay.redis_password", msg))
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
        Some(_) => {
            c.problem(
                "replay.store",
                "is not one of \"memory\", \"redis\" (the value is not repeated here)",
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
        if let Some(reserved) = reserved_header(name) {
            // `reserved` is our own list's spelling, not the file's.
            c.problem_with(
                key,
                format!("`{reserved}` is a protocol header; choose a name of your own such as X-Persona-Event-Id"),
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
                c.problem(
                    k("path"),
                    "must start with `/` (the value is not repeated here)",
                );
                (p.to_string(), b"/".to_vec())
            }
            Some(p) => match path::normalize(p.as_bytes()) {
                Ok(n) => (p.to_string(), n),
                Err(_) => {
                    c.problem(
                        k("path"),
                        "is not a valid path: invalid percent-encoding or a NUL byte (the value is not repeated here)",
                    );
                    (p.to_string(), b"/".to_vec())
                }
            },
        };
        if let Some((_, j)) = seen_paths.iter().find(|(n, _)| *n == normalized)
            && r.path.is_some()
        {
            c.problem_with(
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
                        Err(msg) => c.problem_with(format!("route[{i}].secrets[{j}]"), msg),
                    }
                }
            }
        }
        let tolerance = c.duration(&k("tolerance"), r.tolerance.as_deref(), DEFAULT_TOLERANCE);
        let max_body = c.size(&k("max_body"), r.max_body.as_deref(), DEFAULT_MAX_BODY);
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
            matcher: path::RoutePath::new(&normalized),
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
        c.problem_with(
            "replay.ttl",
            format!(
                "{} is less than twice the largest route tolerance ({}); set ttl to at least {}",
                humantime::format_duration(ttl),
                humantime::format_duration(max_tol),
                humantime::format_duration(max_tol * 2)
            ),
        );
    }
    if let Some((i, r)) = routes.iter().enumerate().max_by_key(|(_, r)| r.max_body)
        && r.max_body > max_buffered
    {
        c.problem_with(
            "server.max_buffered",
            format!(
                "{} is less than route[{i}].max_body ({}): a delivery that large could never be held",
                bytesize::ByteSize(max_buffered),
                bytesize::ByteSize(r.max_body)
            ),
        );
    }
    if inflight_ttl < upstream.connect_timeout + upstream.read_timeout {
        c.problem_with(
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
        max_buffered,
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

fn parse_pattern(e: &str) -> Result<EventPattern, &'static str> {
    if e.is_empty() {
        return Err("an event name cannot be empty");
    }
    match e.find('*') {
        None => Ok(EventPattern::Exact(e.to_string())),
        Some(pos) if pos == e.len() - 1 => Ok(EventPattern::Prefix(e[..pos].to_string())),
        Some(_) => Err(
            "`*` is only allowed at the end, as in \"inquiry.*\" (the value is not repeated here)",
        ),
    }
}

/// Headers the proxy or HTTP itself owns: not usable as trusted header names.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-type",
    "persona-signature",
];

/// The entry of [`RESERVED_HEADERS`] that `name` is, if any.
fn reserved_header(name: &HeaderName) -> Option<&'static str> {
    RESERVED_HEADERS
        .iter()
        .copied()
        .find(|r| *r == name.as_str())
}

/// The gist of a [`crate::tls::load_certified_key`] error, whose text names the
/// files: fixed words only.
fn tls_gist(e: &str) -> &'static str {
    if e.contains("does not match") {
        "the private key does not match the certificate"
    } else if e.contains("unsupported type") {
        "the private key is of an unsupported type"
    } else if e.contains("PEM expected") {
        "no certificate in cert or no private key in key (PEM files expected)"
    } else if e.contains("crypto provider") {
        "no TLS crypto provider is installed"
    } else {
        "cannot load the certificate and key (PEM files expected)"
    }
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
    fn unknown_keys_are_rejected_by_line_without_repeating_the_key() {
        let problems = from_str(
            "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\ntolerence = \"5m\"\n",
            &env(),
        )
        .unwrap_err();
        assert_eq!(keys(&problems), vec!["route[0]"]);
        let m = &problems[0].message;
        assert!(!m.contains("tolerence"), "{m}");
        assert!(m.contains("line 4"), "{m}");
        // The allowed keys are listed instead.
        for allowed in ["`path`", "`secrets`", "`tolerance`", "`max_body`"] {
            assert!(m.contains(allowed), "{allowed} missing: {m}");
        }

        let problems = from_str("wbhsec_pasted = 1\n", &env()).unwrap_err();
        assert_eq!(keys(&problems), vec!["(top level)"]);
        assert!(problems[0].message.contains("`route`"), "{problems:?}");
        assert!(!problems[0].message.contains("wbhsec"), "{problems:?}");
    }

    #[test]
    fn type_errors_name_the_key_path_line_and_expected_type() {
        let text = "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n[[route]]\npath = \"/b\"\nsecrets = [\"y\", 7]\n";
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["route[1].secrets[1]"]);
        assert_eq!(
            p[0].message, "expected a string, found an integer (line 6)",
            "{p:?}"
        );
        let p = from_str("[replay]\ncapacity = -3\n", &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["replay.capacity"]);
        assert!(p[0].message.contains("0 or more"), "{p:?}");
        assert!(!p[0].message.contains('3'), "{p:?}");
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
        let (i, r) = c.route_for_target(b"/hooks/persona/x").unwrap().unwrap();
        assert_eq!(i, 1);
        assert!(r.allows("inquiry.approved"));
        assert!(r.allows("verification.passed"));
        assert!(!r.allows("verification.failed"));
        assert_eq!(c.route_for_target(b"/hooks/other").unwrap().unwrap().0, 0);
        assert_eq!(
            c.route_for_target(b"http://h/HOOKS/x").unwrap().unwrap().0,
            0
        );
        assert!(c.route_for_target(b"/other").unwrap().is_none());
        // Read literally it is under /hooks/persona, resolved under /hooks:
        // the app could run either handler, so no route is chosen.
        for t in [&b"/hooks/persona/.."[..], b"/hooks/persona.json"] {
            assert_eq!(c.route_for_target(t).err(), Some(RouteError::Ambiguous));
        }
        assert_eq!(
            c.route_for_target(b"/hooks/%zz").err(),
            Some(RouteError::Path(path::PathError::BadEncoding))
        );
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

    #[test]
    fn only_conventional_env_names_are_shown() {
        for shown in [
            "SECRET",
            "PERSONA_WEBHOOK_SECRET",
            "NOT_SET_ANYWHERE",
            "PG_E2E_1",
        ] {
            assert!(looks_like_env_name(shown), "{shown}");
        }
        for hidden in [
            "",
            "wbhsec_abc",
            "Secret",
            "AKIAIOSFODNN7EXAMPLE",
            "_LEADING",
            "DOUBLE__UNDERSCORE",
            "HAS-DASH",
            "A_B_C_D_E_F_G_H_I_J_K_L_M_N_O_P_Q_R_S_T_U_V_W_X_Y_Z_A_B_C_D_E_F_G_H",
        ] {
            assert!(!looks_like_env_name(hidden), "{hidden}");
        }
        let p = from_str(
            "[[route]]\npath = \"/a\"\nsecrets = [\"env:wbhsec_pasted\", \"env:UNSET_NAME\"]\n",
            &env(),
        )
        .unwrap_err();
        assert_eq!(keys(&p), vec!["route[0].secrets[0]", "route[0].secrets[1]"]);
        assert!(!p[0].message.contains("wbhsec"), "{p:?}");
        assert!(p[1].message.contains("`UNSET_NAME`"), "{p:?}");
    }

    /// A secret written in the wrong place: distinctive, so any echo shows.
    const CANARY: &str = "wbhsec_LEAKCANARY_q7Zr2xW9";

    /// The first 6-character piece of [`CANARY`] found in `out`.
    fn canary_piece_in(out: &str) -> Option<&'static str> {
        (0..=CANARY.len() - 6)
            .map(|i| &CANARY[i..i + 6])
            .find(|w| out.contains(w))
    }

    const CANARY_BASE: &str = r#"unmatched = "forward"

[listen]
address = "127.0.0.1:18080"

[admin]
address = "127.0.0.1:19090"

[upstream]
address = "127.0.0.1:13000"
connect_timeout = "2s"

[replay]
store = "memory"
ttl = "15m"
capacity = 1000

[headers]
event_type = "X-Persona-Event-Type"
event_id = "X-Persona-Event-Id"

[[route]]
path = "/webhooks/persona"
secrets = ["env:SECRET"]
tolerance = "5m"
max_body = "1MiB"
events = ["inquiry.*"]
"#;

    /// (what, replace this line of the base, with this (`C` = the canary),
    /// text the report must contain).
    /// One case for each way a message is made (serde's type and variant
    /// errors, unknown and duplicate keys, TOML syntax, our own validation).
    /// Every wrong place we could think of runs through the real binary in
    /// `tests/e2e/cli.rs`.
    const CANARY_CASES: &[(&str, &str, &str, &[&str])] = &[
        (
            "secrets as a string",
            r#"secrets = ["env:SECRET"]"#,
            r#"secrets = "C""#,
            &[
                "route[0].secrets",
                "line 24",
                "expected a list, found a string",
            ],
        ),
        (
            "secrets env: name",
            r#"secrets = ["env:SECRET"]"#,
            r#"secrets = ["env:C"]"#,
            &["route[0].secrets[0]", "not set"],
        ),
        (
            "tolerance",
            r#"tolerance = "5m""#,
            r#"tolerance = "C""#,
            &["route[0].tolerance"],
        ),
        (
            "events pattern",
            r#"events = ["inquiry.*"]"#,
            r#"events = ["C*x"]"#,
            &["route[0].events[0]"],
        ),
        (
            "unmatched",
            r#"unmatched = "forward""#,
            r#"unmatched = "C""#,
            &["unmatched", "\"forward\", \"deny\""],
        ),
        (
            "redis_url password",
            r#"store = "memory""#,
            "store = \"redis\"\nredis_url = \"redis://:C@127.0.0.1:notaport/0\"",
            &["replay.redis_url"],
        ),
        (
            "header name",
            r#"event_id = "X-Persona-Event-Id""#,
            r#"event_id = "C: x""#,
            &["headers.event_id"],
        ),
        (
            "unknown key, quoted",
            r#"tolerance = "5m""#,
            r#""C with `ticks` and \"quotes\"" = 1"#,
            &["route[0]", "line 25"],
        ),
        (
            "duplicate key's name",
            r#"tolerance = "5m""#,
            "C = 1\nC = 2",
            &["(syntax)", "line 26"],
        ),
        (
            "unterminated string",
            r#"path = "/webhooks/persona""#,
            r#"path = "/C"#,
            &["(syntax)", "line 23"],
        ),
        (
            "invalid escape",
            r#"path = "/webhooks/persona""#,
            r#"path = "/C\q""#,
            &["(syntax)", "line 23"],
        ),
        (
            "unquoted value",
            r#"tolerance = "5m""#,
            "tolerance = C",
            &["(syntax)", "line 25"],
        ),
    ];

    fn canary_case(what: &str, old: &str, new: &str) -> String {
        let new = new.replace('C', CANARY);
        let text = CANARY_BASE.replacen(old, &new, 1);
        assert_ne!(text, CANARY_BASE, "{what}: `{old}` not in the base file");
        text
    }

    #[test]
    fn no_problem_quotes_a_secret_written_in_the_wrong_place() {
        assert!(from_str(CANARY_BASE, &env()).is_ok());
        for (what, old, new, expect) in CANARY_CASES {
            let text = canary_case(what, old, new);
            assert!(text.contains(CANARY), "{what}: the canary is in the file");
            let problems = from_str(&text, &env())
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted\n{text}"));
            let out = ConfigError {
                file: "routes.toml".into(),
                problems,
            }
            .to_string();
            if let Some(piece) = canary_piece_in(&out) {
                panic!("{what}: the report quotes `{piece}`:\n{out}");
            }
            for e in *expect {
                assert!(out.contains(e), "{what}: `{e}` missing from\n{out}");
            }
        }
    }
}
