//! The one description of the route file: [`KEYS`], every key with its kind,
//! default, variable, whether a reload can apply it and a line of
//! documentation. The parser (`doc.rs`), unknown keys (`unknown.rs`), the
//! `PERSONA_GUARD_*` overlay and `check --print` (`env.rs`), the reload's
//! restart-only diff (`process.rs`) and `docs/config-keys.md` ([`markdown`])
//! all read it. Rules that relate keys stay in the section files.

use std::fmt::Write as _;

/// Every variable name starts with this.
pub const PREFIX: &str = "PERSONA_GUARD_";

/// What a key holds. The TOML type is [`Kind::ty`]; the rest says how the
/// string is read, for the docs and for `check --print`'s redaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// `300ms`, `30s`, `5m`, `72h`, `7d`.
    Duration,
    /// `64KiB`, `1MiB`.
    Size,
    /// `host:port`.
    Address,
    /// A file or directory path (relative: from the file's directory).
    Path,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A string shown as `<redacted>` by `check --print` (`redis_url` may hold a password).
    Hidden,
    /// A whole number, 0 or more.
    Int,
    /// A number (`0.25`; an integer is one too).
    Float,
    Bool,
    /// A list of strings (comma-separated in a variable).
    List,
    /// One secret reference: `env:NAME` or `file:/path`.
    Secret,
    /// A list of secret references (a literal is allowed in the file).
    SecretList,
    /// A table of names to secret references (a literal is allowed in the
    /// file); in a variable, `Name=env:VAR` pairs, comma-separated.
    SecretMap,
}

/// A TOML type as the schema uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Float,
    Bool,
    List,
    /// A table of strings.
    Map,
}

impl Kind {
    pub fn ty(self) -> Ty {
        match self {
            Kind::Int => Ty::Int,
            Kind::Float => Ty::Float,
            Kind::Bool => Ty::Bool,
            Kind::List | Kind::SecretList => Ty::List,
            Kind::SecretMap => Ty::Map,
            _ => Ty::Str,
        }
    }

    /// Whether `check --print` may not show the value as written.
    pub fn secret(self) -> bool {
        matches!(
            self,
            Kind::Hidden | Kind::Secret | Kind::SecretList | Kind::SecretMap
        )
    }

    /// The kind in the docs' words.
    fn describe(self) -> String {
        match self {
            Kind::Str => "string".into(),
            Kind::Duration => "duration (`300ms`, `5m`, `72h`)".into(),
            Kind::Size => "size (`64KiB`, `1MiB`)".into(),
            Kind::Address => "address (`host:port`)".into(),
            Kind::Path => "path".into(),
            Kind::Choice(words) => {
                let w: Vec<String> = words.iter().map(|w| format!("`\"{w}\"`")).collect();
                format!("one of {}", w.join(", "))
            }
            Kind::Hidden => "string (redacted by `check --print`)".into(),
            Kind::Int => "integer, 0 or more".into(),
            Kind::Float => "number".into(),
            Kind::Bool => "`true` / `false`".into(),
            Kind::List => "list of strings".into(),
            Kind::Secret => "`env:NAME` or `file:/path`".into(),
            Kind::SecretList => "list of secrets (`env:NAME`, `file:/path` or a literal)".into(),
            Kind::SecretMap => {
                "table of names to secrets (`env:NAME`, `file:/path` or a literal)".into()
            }
        }
    }
}

/// A key's default as `check --print` shows it.
#[derive(Debug, Clone, Copy)]
pub enum Def {
    /// The default, as a TOML value.
    Value(&'static str),
    /// No value: what not setting the key means.
    Unset(&'static str),
}

/// A key a SIGHUP reload cannot apply: the running value stays and the reload
/// names the key (see `process.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// Named by its table (`listen.tls`: turning the table on or off), not the key.
    pub table: bool,
    /// What happens instead, for the operator.
    pub note: &'static str,
}

/// One key of the route file.
#[derive(Debug)]
pub struct Key {
    /// `""` (top level), `"server"`, `"listen.tls"`, `"route"` (`[[route]]`).
    pub table: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    pub default: Def,
    pub restart: Option<Restart>,
    pub doc: &'static str,
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
        let path = self.path().replace('.', "_").to_ascii_uppercase();
        format!("{PREFIX}{path}")
    }

    /// A key of `[[route]]` or of one of its tables (`[route.oauth]`).
    pub fn is_route(&self) -> bool {
        self.table == "route" || self.table.starts_with("route.")
    }

    /// The table below `[[route]]` a route key sits in (`"oauth"`), or `""`.
    pub fn route_table(&self) -> &'static str {
        self.table.strip_prefix("route.").unwrap_or_default()
    }

    /// The key of route `i` as problems name it: `route[0].path`,
    /// `route[0].oauth.issuer`.
    pub fn route_path(&self, i: usize) -> String {
        match self.route_table() {
            "" => format!("route[{i}].{}", self.name),
            t => format!("route[{i}].{t}.{}", self.name),
        }
    }
}

/// The key at `path` as problems name it (`replay.ttl`, `route[2].path`).
pub fn key_at(path: &str) -> Option<&'static Key> {
    let route = path
        .strip_prefix("route[")
        .and_then(|r| r.split_once("]."))
        .map(|(_, name)| name);
    match route {
        Some(rest) => KEYS
            .iter()
            .find(|k| k.is_route() && k.route_path(0).strip_prefix("route[0].") == Some(rest)),
        None => KEYS.iter().find(|k| !k.is_route() && k.path() == path),
    }
}

/// The default of the key at `path` (`replay.ttl`, `route[2].tolerance`) as
/// the key's text: a string unquoted, a number or boolean as written.
pub fn default_str(path: &str) -> Option<&'static str> {
    match key_at(path)?.default {
        Def::Value(v) => Some(v.trim_matches('"')),
        Def::Unset(_) => None,
    }
}

const fn restart(note: &'static str) -> Option<Restart> {
    Some(Restart { table: false, note })
}

macro_rules! schema {
    ($( [$table:literal] $name:ident: $kind:expr, $def:expr, $restart:expr, $doc:literal; )*) => {
        /// Every key, in the order `check --print` and the docs show them:
        /// tables in file order.
        pub const KEYS: &[Key] = &[$(Key {
            table: $table,
            name: stringify!($name),
            kind: $kind,
            default: $def,
            restart: $restart,
            doc: $doc,
        }),*];
    };
}

use Def::{Unset, Value as V};
use Kind::*;

#[rustfmt::skip]
schema! {
    [""] unmatched: Choice(&["forward", "deny"]), V("\"forward\""), None,
        "What a path under no route gets: forwarded unchecked, or 404.";
    [""] log_format: Choice(&["text", "json"]), V("\"text\""),
        restart("the log format is set at start"),
        "Log line format.";
    ["listen"] address: Address, V("\"0.0.0.0:8080\""),
        restart("the bound listener stays until a restart"),
        "The public listener.";
    ["listen.tls"] cert: Path, Unset("no TLS: plain HTTP"),
        Some(Restart { table: true, note: "TLS is turned on or off only on restart (a new cert or key reloads)" }),
        "Certificate chain (PEM) of the public listener; with `key`, turns TLS on (HTTP/1.1 and HTTP/2).";
    ["listen.tls"] key: Path, Unset("no TLS: plain HTTP"), None,
        "Private key (PEM) matching `cert`.";
    ["admin"] address: Address, V("\"127.0.0.1:9090\""),
        restart("the bound admin listener stays until a restart"),
        "The admin listener (health, readiness, metrics, spool); must differ from `listen.address`.";
    ["admin"] token: Secret, Unset("none: state-changing calls from loopback only"), None,
        "Bearer token that lets a peer other than loopback make the admin listener's state-changing calls.";
    ["server"] threads: Int, Unset("the number of CPUs"),
        restart("pingora starts its worker threads once"),
        "Worker threads, at least 1.";
    ["server"] grace_period: Duration, V("\"10s\""),
        restart("pingora fixes the shutdown grace period at start"),
        "After SIGTERM, how long in-flight requests may take to finish.";
    ["server"] body_timeout: Duration, V("\"10s\""), None,
        "A webhook route's whole request body must arrive within this.";
    ["server"] idle_timeout: Duration, V("\"60s\""),
        restart("HTTP/2 connections keep the value from start; HTTP/1 uses the new one"),
        "How long an idle client connection is kept open (at least 1s).";
    ["server"] header_timeout: Duration, V("\"10s\""), None,
        "A request head must arrive whole within this, from its first byte.";
    ["server"] max_buffered: Size, V("\"64MiB\""), None,
        "Request body bytes held in memory at once, all requests together.";
    ["server"] max_buffered_per_client: Size, Unset("an eighth of max_buffered, at least the largest max_body"), None,
        "Request body bytes one client address holds at once.";
    ["server"] min_body_rate: Size, V("\"1KiB\""), None,
        "Passthrough body bytes per second, after a 5 s grace; slower is cut off.";
    ["server"] trusted_proxies: List, Unset("none"), None,
        "Peers (addresses or CIDRs) whose `X-Forwarded-For` is believed.";
    ["server"] max_connections: Int, V("4096"), None,
        "Open client connections, all peers (at least 1).";
    ["server"] max_connections_per_peer: Int, V("256"), None,
        "Open client connections from one TCP peer; peers in `trusted_proxies` are exempt.";
    ["upstream"] address: Str, V("\"127.0.0.1:3000\""), None,
        "The application: `host:port`, `http://host[:port]` or `https://host[:port]`.";
    ["upstream"] connect_timeout: Duration, V("\"2s\""), None,
        "Connecting to the upstream.";
    ["upstream"] read_timeout: Duration, V("\"30s\""), None,
        "Each wait for the upstream: its response head, and between body reads.";
    ["upstream"] tls: Bool, Unset("true for an https:// address"), None,
        "TLS to the upstream.";
    ["upstream"] sni: Str, Unset("the address's host"), None,
        "Server name sent and verified.";
    ["upstream"] verify: Bool, V("true"), None,
        "Verify the upstream's certificate and name.";
    ["upstream"] ca_file: Path, Unset("the system roots"),
        restart("the upstream CA bundle is loaded at start"),
        "CA bundle (PEM) trusted for upstream TLS instead of the system roots.";
    ["upstream"] host_header: Choice(&["keep", "upstream"]), V("\"keep\""), None,
        "The `Host` the upstream sees: the client's, or the upstream's own authority.";
    ["replay"] store: Choice(&["memory", "redis"]), V("\"memory\""),
        restart("the replay store is chosen at start (its Redis settings reload)"),
        "Where delivered event ids are remembered.";
    ["replay"] ttl: Duration, V("\"72h\""), None,
        "How long a delivered id is remembered; at least twice the largest tolerance.";
    ["replay"] capacity: Int, V("300000"),
        restart("the memory store is sized at start"),
        "Ids the memory store holds (at least 1).";
    ["replay"] inflight_ttl: Duration, V("\"60s\""), None,
        "How long a dead instance's in-flight mark holds an event.";
    ["replay"] redis_url: Hidden, Unset("none (store = \"redis\" only)"), None,
        "`redis://` or `rediss://` URL of the Redis store.";
    ["replay"] redis_password: Secret, Unset("none (store = \"redis\" only)"), None,
        "Redis password.";
    ["replay"] redis_timeout: Duration, Unset("\"500ms\" (store = \"redis\" only)"), None,
        "Bounds connecting to Redis and every command.";
    ["replay"] key_prefix: Str, Unset("\"persona-guard:\" (store = \"redis\" only)"), None,
        "Prefix of every Redis key.";
    ["replay"] on_store_error: Choice(&["reject", "allow"]), Unset("\"reject\" (store = \"redis\" only)"), None,
        "When Redis cannot answer: 503, or forward without replay protection.";
    ["headers"] event_type: Str, V("\"X-Persona-Event-Type\""), None,
        "Trusted header set to the verified event's type.";
    ["headers"] event_id: Str, V("\"X-Persona-Event-Id\""), None,
        "Trusted header set to the verified event's id.";
    ["headers"] event_created_at: Str, V("\"X-Persona-Event-Created-At\""), None,
        "Trusted header set to the verified event's creation time.";
    ["spool"] dir: Path, Unset("none"),
        restart("the spool directory is opened at start; its entries stay where they are"),
        "Directory of the delivery spool (memory store); created at start.";
    ["spool"] max_bytes: Size, V("\"256MiB\""),
        restart("the spool is sized at start"),
        "Bytes the spool holds, all entries together (at least 1KiB).";
    ["spool"] max_age: Duration, V("\"7d\""), None,
        "A spooled delivery older than this becomes a dead letter (at least 1s).";
    ["spool"] max_backoff: Duration, V("\"60s\""), None,
        "The longest wait between two redeliveries (at least 1s).";
    ["spool"] key: Secret, Unset("none: entries are not sealed"),
        restart("the spool key is loaded at start (entries sealed with it need it to be read)"),
        "32-byte key (64 hex or base64) that seals spooled entries (AES-256-GCM).";
    ["tracing"] otlp_endpoint: Str, Unset("none: tracing off"),
        restart("the span exporter is built at start"),
        "OTLP/HTTP traces URL (`http://`, no credentials); turns span export on.";
    ["tracing"] sampling_ratio: Float, V("1.0"),
        restart("the sampler is built at start"),
        "Share of new traces recorded, 0.0 to 1.0.";
    ["tracing"] service_name: Str, V("\"persona-guard\""),
        restart("the service name is set on the exporter at start"),
        "`service.name` on every span.";
    ["route"] path: Str, Unset("required"), None,
        "The path prefix the route protects (visible ASCII).";
    ["route"] secrets: SecretList, Unset("required"), None,
        "Webhook secrets; a signature by any of them is accepted.";
    ["route"] tolerance: Duration, V("\"5m\""), None,
        "How far the signature's timestamp may be from now.";
    ["route"] max_body: Size, V("\"1MiB\""), None,
        "Largest body accepted (at most 64MiB).";
    ["route"] events: List, Unset("every event type"), None,
        "Event types forwarded: exact names or prefixes ending in `*`.";
    ["route"] upstream: Str, Unset("the [upstream] address"), None,
        "This route's own upstream address.";
    ["route"] allow_from: List, Unset("any source"), None,
        "Client addresses accepted: addresses, CIDRs or `\"persona\"`.";
    ["route"] kind: Choice(&["event", "signature"]), V("\"event\""), None,
        "Persona webhook events, or any signed body.";
    ["route"] id_pointer: Str, Unset("none"), None,
        "`kind = \"signature\"`: JSON pointer to the id deliveries are deduplicated on.";
    ["route"] spool: Choice(&["off", "on_failure", "always"]), V("\"off\""), None,
        "Whether verified deliveries are kept in the delivery spool.";
    ["route"] require_headers: SecretMap, Unset("none"), None,
        "Headers every delivery must carry, name to value; else 401 `invalid_header_token`.";
    ["route.oauth"] jwks_url: Str, Unset("none: no bearer token required"), None,
        "The JWKS of the issuer of Persona's bearer tokens (`https://`, or `http://` on loopback); requires a token.";
    ["route.oauth"] issuer: Str, Unset("required with jwks_url"), None,
        "The tokens' `iss`.";
    ["route.oauth"] audience: Str, Unset("required with jwks_url"), None,
        "The tokens' `aud` must be, or hold, this.";
    ["route.oauth"] scopes: List, Unset("none"), None,
        "Scopes every token must grant (in `scope` or `scp`).";
    ["route.oauth"] jwks_refresh: Duration, V("\"1h\""), None,
        "How often the JWKS is fetched again (at least 1s).";
    ["route.reconcile"] api_key: Secret, Unset("none: no reconciliation"), None,
        "Persona API key (`env:`/`file:` only) that lists the organisation's events; turns reconciliation on.";
    ["route.reconcile"] mode: Choice(&["report", "backfill"]), V("\"report\""), None,
        "What a missing event gets: logged and counted, or delivered to the app like a verified first-time delivery.";
    ["route.reconcile"] api_base: Str, V("\"https://api.withpersona.com\""), None,
        "Persona's API (`https://`, or `http://` on loopback).";
    ["route.reconcile"] interval: Duration, V("\"15m\""), None,
        "Time between two runs (at least 1s).";
    ["route.reconcile"] window: Duration, V("\"48h\""), None,
        "How far back a run looks; at most `replay.ttl`.";
    ["route.reconcile"] grace: Duration, V("\"15m\""), None,
        "Events younger than this are not judged (Persona may still be delivering them).";
    ["route.reconcile"] webhook_id: Str, Unset("none: the route's `events` only"), None,
        "The Persona webhook (`wbh_...`) whose enabled events are judged.";
    ["route.reconcile"] inflection: Choice(&["kebab", "camel", "snake"]), V("\"kebab\""), None,
        "`Key-Inflection` asked of the API (and how `created-at` is spelt in its answers).";
}

/// `docs/config-keys.md`: the schema as a markdown table.
pub fn markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from src/config/schema.rs; do not edit. Regenerate: BLESS=1 cargo test --lib config_keys_doc -->\n\
         # Configuration keys\n\n\
         Every key of the route file. Each can also be set by its environment variable, which \
         overrides the file; a `[[route]]` key's variable sets the single route. *Restart*: a \
         SIGHUP reload keeps the running value and names the key. *Secret*: `check --print` \
         does not show the value as written.\n\n\
         | key | variable | kind | default | restart | secret | meaning |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let key = match k.table {
            "" => format!("`{}`", k.name),
            "route" => format!("`[[route]] {}`", k.name),
            t if k.is_route() => format!("`[{t}] {}` (per route)", k.name),
            t => format!("`[{t}] {}`", k.name),
        };
        let default = match k.default {
            Def::Value(v) => format!("`{v}`"),
            Def::Unset(what) => what.to_string(),
        };
        let restart = match k.restart {
            Some(r) if r.table => "on/off",
            Some(_) => "yes",
            None => "",
        };
        let secret = if k.kind.secret() { "yes" } else { "" };
        let _ = writeln!(
            out,
            "| {key} | `{}` | {} | {default} | {restart} | {secret} | {} |",
            k.var(),
            k.kind.describe(),
            k.doc
        );
    }
    out
}
