//! The keys a `PERSONA_GUARD_*` variable can set: [`KEYS`], in the order
//! `check --print` shows them, and the types that describe each key.

use super::PREFIX;

/// A key's TOML type, as a variable's string is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (durations, sizes, addresses, paths, choices).
    Str,
    /// A string shown as `<redacted>` by `check --print` (`redis_url` may hold a password).
    Hidden,
    /// An integer.
    Int,
    /// A number (`0.25`).
    Float,
    /// `true` or `false`.
    Bool,
    /// A list of strings, comma-separated.
    List,
    /// One secret reference: `env:NAME` or `file:/path`.
    Secret,
    /// A list of secret references, comma-separated.
    SecretList,
}

/// A key's default as `check --print` shows it.
#[derive(Debug, Clone, Copy)]
pub enum Def {
    /// The default, as a TOML value.
    Value(&'static str),
    /// No value: what not setting the key means.
    Unset(&'static str),
}

/// One key of the route file that a variable can set.
#[derive(Debug)]
pub struct Key {
    /// `""` (top level), `"server"`, `"listen.tls"`, `"route"` (`[[route]]`).
    pub table: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    pub default: Def,
}

impl Key {
    /// The key as the file spells it: `replay.ttl`, `route.path`, `unmatched`.
    pub fn path(&self) -> String {
        if self.table.is_empty() {
            self.name.to_string()
        } else {
            format!("{}.{}", self.table, self.name)
        }
    }

    /// The variable that sets it.
    pub fn var(&self) -> String {
        format!(
            "{PREFIX}{}",
            self.path().replace('.', "_").to_ascii_uppercase()
        )
    }

    pub(super) fn is_route(&self) -> bool {
        self.table == "route"
    }
}

const fn k(table: &'static str, name: &'static str, kind: Kind, default: Def) -> Key {
    Key {
        table,
        name,
        kind,
        default,
    }
}

use Def::{Unset, Value as V};
use Kind::{Bool, Float, Hidden, Int, List, Secret, SecretList, Str};

/// Every key a variable can set, in the order `check --print` shows them.
/// Tables in file order; a new table is a new block here.
pub const KEYS: &[Key] = &[
    k("", "unmatched", Str, V("\"forward\"")),
    k("", "log_format", Str, V("\"text\"")),
    k("listen", "address", Str, V("\"0.0.0.0:8080\"")),
    k("listen.tls", "cert", Str, Unset("no TLS: plain HTTP")),
    k("listen.tls", "key", Str, Unset("no TLS: plain HTTP")),
    k("admin", "address", Str, V("\"127.0.0.1:9090\"")),
    k(
        "admin",
        "token",
        Secret,
        Unset("none: state-changing calls from loopback only"),
    ),
    k("server", "threads", Int, Unset("the number of CPUs")),
    k("server", "grace_period", Str, V("\"10s\"")),
    k("server", "body_timeout", Str, V("\"10s\"")),
    k("server", "idle_timeout", Str, V("\"60s\"")),
    k("server", "header_timeout", Str, V("\"10s\"")),
    k("server", "max_buffered", Str, V("\"64MiB\"")),
    k(
        "server",
        "max_buffered_per_client",
        Str,
        Unset("an eighth of max_buffered, at least the largest max_body"),
    ),
    k("server", "min_body_rate", Str, V("\"1KiB\"")),
    k("server", "trusted_proxies", List, Unset("none")),
    k("server", "max_connections", Int, V("4096")),
    k("server", "max_connections_per_peer", Int, V("256")),
    k("upstream", "address", Str, V("\"127.0.0.1:3000\"")),
    k("upstream", "connect_timeout", Str, V("\"2s\"")),
    k("upstream", "read_timeout", Str, V("\"30s\"")),
    k(
        "upstream",
        "tls",
        Bool,
        Unset("true for an https:// address"),
    ),
    k("upstream", "sni", Str, Unset("the address's host")),
    k("upstream", "verify", Bool, V("true")),
    k("upstream", "ca_file", Str, Unset("the system roots")),
    k("upstream", "host_header", Str, V("\"keep\"")),
    k("replay", "store", Str, V("\"memory\"")),
    k("replay", "ttl", Str, V("\"72h\"")),
    k("replay", "capacity", Int, V("300000")),
    k("replay", "inflight_ttl", Str, V("\"60s\"")),
    k(
        "replay",
        "redis_url",
        Hidden,
        Unset("none (store = \"redis\" only)"),
    ),
    k(
        "replay",
        "redis_password",
        Secret,
        Unset("none (store = \"redis\" only)"),
    ),
    k(
        "replay",
        "redis_timeout",
        Str,
        Unset("\"500ms\" (store = \"redis\" only)"),
    ),
    k(
        "replay",
        "key_prefix",
        Str,
        Unset("\"persona-guard:\" (store = \"redis\" only)"),
    ),
    k(
        "replay",
        "on_store_error",
        Str,
        Unset("\"reject\" (store = \"redis\" only)"),
    ),
    k("headers", "event_type", Str, V("\"X-Persona-Event-Type\"")),
    k("headers", "event_id", Str, V("\"X-Persona-Event-Id\"")),
    k(
        "headers",
        "event_created_at",
        Str,
        V("\"X-Persona-Event-Created-At\""),
    ),
    k("spool", "dir", Str, Unset("none")),
    k("spool", "max_bytes", Str, V("\"256MiB\"")),
    k("spool", "max_age", Str, V("\"7d\"")),
    k("spool", "max_backoff", Str, V("\"60s\"")),
    k(
        "spool",
        "key",
        Secret,
        Unset("none: entries are not sealed"),
    ),
    k("tracing", "otlp_endpoint", Str, Unset("none: tracing off")),
    k("tracing", "sampling_ratio", Float, V("1.0")),
    k("tracing", "service_name", Str, V("\"persona-guard\"")),
    k("route", "path", Str, Unset("required")),
    k("route", "secrets", SecretList, Unset("required")),
    k("route", "tolerance", Str, V("\"5m\"")),
    k("route", "max_body", Str, V("\"1MiB\"")),
    k("route", "events", List, Unset("every event type")),
    k("route", "upstream", Str, Unset("the [upstream] address")),
    k("route", "allow_from", List, Unset("any source")),
    k("route", "kind", Str, V("\"event\"")),
    k("route", "id_pointer", Str, Unset("none")),
    k("route", "spool", Str, V("\"off\"")),
];
