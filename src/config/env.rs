//! Configuration from the environment: every non-secret scalar key of the
//! route file (and the secret *references*) can be set by a
//! `PERSONA_GUARD_*` variable, which overrides the file.
//!
//! # The naming rule
//!
//! `PERSONA_GUARD_` + the key's table path and name, upper-cased, `.` → `_`:
//! `replay.ttl` → `PERSONA_GUARD_REPLAY_TTL`, `listen.tls.cert` →
//! `PERSONA_GUARD_LISTEN_TLS_CERT`, top-level `log_format` →
//! `PERSONA_GUARD_LOG_FORMAT`. Route keys are `PERSONA_GUARD_ROUTE_<KEY>` and
//! apply to the single `[[route]]` (creating it when the file has none; an
//! error when it has two or more).
//!
//! [`KEYS`] is the one authoritative list: the overlay, `check --print` and
//! the README's table come from it, and a test holds it equal to the `Raw*`
//! structs' fields (a new table or key added there fails that test until it
//! is listed here).
//!
//! # Values
//!
//! A variable's string is read as the key's TOML type: strings as they are
//! (durations and sizes are strings already), integers and booleans parsed,
//! lists split on `,` (each item trimmed). The keys that hold secret
//! references (`route.secrets`, `replay.redis_password`, `spool.key`) take
//! only `env:NAME` or `file:/path`: a secret itself is never read from a
//! `PERSONA_GUARD_*` value. Problems name the variable, never its value.
//!
//! # Which `PERSONA_GUARD_*` variables are not settings
//!
//! Any other `PERSONA_GUARD_*` variable is an error (a typo must not pass
//! silently), except [`RESERVED`] (the test suite's `PERSONA_GUARD_BIN`) and
//! every variable named by an `env:` reference of the effective configuration
//! (`spool.key = "env:PERSONA_GUARD_SPOOL_KEY"`): such a variable holds a
//! secret for persona-guard to read, and is never read as a setting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use toml::{Table, Value};

use super::error::Problem;
use super::secret::Env;

/// Every variable name starts with this.
pub const PREFIX: &str = "PERSONA_GUARD_";

/// `PERSONA_GUARD_*` variables persona-guard documents for other uses.
pub const RESERVED: &[&str] = &["PERSONA_GUARD_BIN"];

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

    fn is_route(&self) -> bool {
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
    k("server", "threads", Int, Unset("the number of CPUs")),
    k("server", "grace_period", Str, V("\"10s\"")),
    k("server", "body_timeout", Str, V("\"10s\"")),
    k("server", "idle_timeout", Str, V("\"60s\"")),
    k("server", "header_timeout", Str, V("\"10s\"")),
    k("server", "max_buffered", Str, V("\"64MiB\"")),
    k("server", "trusted_proxies", List, Unset("none")),
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

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File,
    /// The variable's name.
    Env(String),
}

/// Where each value set in the effective configuration came from, by key path
/// (`replay.ttl`, `route[0].path`); a key absent here has its default.
#[derive(Debug, Clone, Default)]
pub struct Provenance(BTreeMap<String, Origin>);

impl Provenance {
    /// Whether any variable set a value.
    pub fn any_env(&self) -> bool {
        self.0.values().any(|o| matches!(o, Origin::Env(_)))
    }

    pub fn get(&self, path: &str) -> Option<&Origin> {
        self.0.get(path)
    }

    /// The variable behind a problem's key (`route[0].secrets[1]` falls under
    /// `route[0].secrets`), if a variable set it.
    fn var_for(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(path, _)| {
                key == path.as_str()
                    || key
                        .strip_prefix(path.as_str())
                        .is_some_and(|rest| rest.starts_with(['[', '.']))
            })
            .max_by_key(|(path, _)| path.len())
            .and_then(|(_, o)| match o {
                Origin::Env(v) => Some(v.as_str()),
                Origin::File => None,
            })
    }

    /// Renames each problem under a key a variable set to the variable (with
    /// the key after it), so the operator looks in the right place.
    pub(super) fn name_vars(&self, problems: &mut [Problem]) {
        for p in problems {
            if let Some(var) = self.var_for(&p.key) {
                p.key = format!("{var} ({})", p.key);
            }
        }
    }
}

/// The parsed file (`table`) with the environment laid over it: each
/// variable's value set into the table, every value's origin recorded.
/// Problems name variables only.
pub(super) fn overlay(table: &mut Table, env: &dyn Env) -> Result<Provenance, Vec<Problem>> {
    let mut prov = Provenance::default();
    record_file(table, "", &mut prov);

    let vars: BTreeMap<String, String> = env
        .settings(PREFIX)
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    let by_var: BTreeMap<String, &Key> = KEYS.iter().map(|k| (k.var(), k)).collect();

    // Variables named by an `env:` reference (in the file, or in a
    // reference a variable sets) hold secrets: never settings.
    let mut referenced = BTreeSet::new();
    collect_refs(table, &mut referenced);
    for (name, value) in &vars {
        if let Some(key) = by_var.get(name)
            && matches!(key.kind, Secret | SecretList)
            && !referenced.contains(name)
        {
            for item in split(value) {
                if let Some(n) = item.strip_prefix("env:") {
                    referenced.insert(n.to_string());
                }
            }
        }
    }

    let routes = table
        .get("route")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut problems = Vec::new();
    for (name, value) in &vars {
        if RESERVED.contains(&name.as_str()) || referenced.contains(name) {
            continue;
        }
        let Some(key) = by_var.get(name) else {
            problems.push(problem(
                name,
                "is not a persona-guard setting (README, \"Environment variables\", lists every one); unset it or fix its name",
            ));
            continue;
        };
        if key.is_route() && routes > 1 {
            problems.push(Problem {
                key: name.clone(),
                message: format!(
                    "sets a key of the single [[route]], but the file has {routes} routes; set it in the file instead"
                ),
            });
            continue;
        }
        match parse(key.kind, value) {
            Ok(v) => {
                let path = set(table, key, v);
                prov.0.insert(path, Origin::Env(name.clone()));
            }
            Err(message) => problems.push(problem(name, message)),
        }
    }
    if problems.is_empty() {
        Ok(prov)
    } else {
        Err(problems)
    }
}

fn problem(var: &str, message: &'static str) -> Problem {
    Problem {
        key: var.to_string(),
        message: message.to_string(),
    }
}

fn split(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A variable's string as the key's TOML type. Messages never repeat it.
fn parse(kind: Kind, value: &str) -> Result<Value, &'static str> {
    let reference = |s: &str| s.starts_with("env:") || s.starts_with("file:");
    const NOT_A_REF: &str = "must be `env:NAME` or `file:/path` (comma-separated for a list): a secret is never given in a PERSONA_GUARD_ variable itself (the value is not repeated here)";
    Ok(match kind {
        Str | Hidden => Value::String(value.to_string()),
        Int => Value::Integer(
            value
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| "is not an integer (the value is not repeated here)")?,
        ),
        Float => Value::Float(
            value
                .trim()
                .parse()
                .map_err(|_| "is not a number (the value is not repeated here)")?,
        ),
        Bool => match value.trim() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err("must be `true` or `false` (the value is not repeated here)"),
        },
        List => Value::Array(split(value).map(|s| Value::String(s.into())).collect()),
        Secret => {
            let v = value.trim();
            if !reference(v) {
                return Err(NOT_A_REF);
            }
            Value::String(v.to_string())
        }
        SecretList => {
            let items: Vec<&str> = split(value).collect();
            if items.iter().any(|s| !reference(s)) {
                return Err(NOT_A_REF);
            }
            Value::Array(items.into_iter().map(|s| Value::String(s.into())).collect())
        }
    })
}

/// Sets `key` in `table` (creating its tables, and the route when there is
/// none); returns the key path as problems name it.
fn set(table: &mut Table, key: &Key, value: Value) -> String {
    if key.is_route() {
        let routes = table
            .entry("route")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = routes {
            if a.is_empty() {
                a.push(Value::Table(Table::new()));
            }
            if let Some(Value::Table(t)) = a.first_mut() {
                t.insert(key.name.to_string(), value);
            }
        }
        return format!("route[0].{}", key.name);
    }
    let mut t = table;
    if !key.table.is_empty() {
        for part in key.table.split('.') {
            let next = t.entry(part).or_insert_with(|| Value::Table(Table::new()));
            // The file was deserialised before: a table key holds a table.
            let Value::Table(inner) = next else {
                return key.path();
            };
            t = inner;
        }
    }
    t.insert(key.name.to_string(), value);
    key.path()
}

/// Records every key set in the file as [`Origin::File`].
fn record_file(table: &Table, path: &str, prov: &mut Provenance) {
    for (name, value) in table {
        let p = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match value {
            Value::Table(t) => record_file(t, &p, prov),
            Value::Array(a) if name == "route" && path.is_empty() => {
                for (i, r) in a.iter().enumerate() {
                    if let Value::Table(t) = r {
                        record_file(t, &format!("route[{i}]"), prov);
                    }
                }
            }
            _ => {
                prov.0.insert(p, Origin::File);
            }
        }
    }
}

/// The variable names of every `env:` reference among the secret keys.
fn collect_refs(table: &Table, out: &mut BTreeSet<String>) {
    let mut add = |v: Option<&Value>| {
        let items: Vec<&Value> = match v {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => vec![],
        };
        for s in items.into_iter().filter_map(Value::as_str) {
            if let Some(n) = s.strip_prefix("env:") {
                out.insert(n.to_string());
            }
        }
    };
    let sub = |t: &str, k: &str| {
        table
            .get(t)
            .and_then(Value::as_table)
            .and_then(|t| t.get(k))
    };
    add(sub("replay", "redis_password"));
    add(sub("spool", "key"));
    if let Some(Value::Array(routes)) = table.get("route") {
        for r in routes {
            add(r.as_table().and_then(|t| t.get("secrets")));
        }
    }
}

/// The effective configuration in TOML form: every key with its value or
/// default, each annotated with where it came from. Secret references are
/// shown as written; a literal secret and `redis_url` are `"<redacted>"`.
pub(super) fn render(table: &Table, prov: &Provenance, source: &str) -> String {
    let mut out = format!(
        "# persona-guard: the effective configuration ({source}; environment variables PERSONA_GUARD_*)\n"
    );
    let mut current = None;
    for key in KEYS.iter().filter(|k| !k.is_route()) {
        let lookup = |key: &Key| {
            let mut t = Some(table);
            for part in key.table.split('.').filter(|p| !p.is_empty()) {
                t = t.and_then(|t| t.get(part)).and_then(Value::as_table);
            }
            t.and_then(|t| t.get(key.name))
        };
        if current != Some(key.table) {
            current = Some(key.table);
            // A table with no value at all is shown commented out: an empty
            // `[listen.tls]` would mean TLS without its files.
            let empty = KEYS
                .iter()
                .filter(|k| k.table == key.table)
                .all(|k| lookup(k).is_none() && matches!(k.default, Unset(_)));
            if !key.table.is_empty() {
                let hash = if empty { "# " } else { "" };
                let _ = write!(out, "\n{hash}[{}]\n", key.table);
            }
        }
        line(&mut out, key, lookup(key), prov.get(&key.path()));
    }
    let routes: Vec<&Table> = table
        .get("route")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default();
    if routes.is_empty() {
        out.push_str("\n# no [[route]]\n");
    }
    for (i, r) in routes.iter().enumerate() {
        out.push_str("\n[[route]]\n");
        for key in KEYS.iter().filter(|k| k.is_route()) {
            let origin = prov.get(&format!("route[{i}].{}", key.name));
            line(&mut out, key, r.get(key.name), origin);
        }
    }
    out
}

fn line(out: &mut String, key: &Key, value: Option<&Value>, origin: Option<&Origin>) {
    let from = match origin {
        Some(Origin::File) => "file".to_string(),
        Some(Origin::Env(v)) => format!("env {v}"),
        None => "default".to_string(),
    };
    match (value, key.default) {
        (Some(v), _) => {
            let _ = writeln!(out, "{} = {}  # {from}", key.name, shown(key.kind, v));
        }
        (None, V(d)) => {
            let _ = writeln!(out, "{} = {d}  # {from}", key.name);
        }
        (None, Unset(what)) => {
            let _ = writeln!(out, "# {} not set: {what}  # {from}", key.name);
        }
    }
}

/// A value as `check --print` may show it: never a secret.
fn shown(kind: Kind, v: &Value) -> String {
    let safe = |s: &str| s.starts_with("env:") || s.starts_with("file:");
    match kind {
        Hidden => "\"<redacted>\"".into(),
        Secret | SecretList => match v {
            Value::String(s) if safe(s) => Value::String(s.clone()).to_string(),
            Value::Array(a) => {
                let items: Vec<String> = a
                    .iter()
                    .map(|i| match i.as_str() {
                        Some(s) if safe(s) => Value::String(s.into()).to_string(),
                        _ => "\"<redacted>\"".into(),
                    })
                    .collect();
                format!("[{}]", items.join(", "))
            }
            _ => "\"<redacted>\"".into(),
        },
        _ => v.to_string(),
    }
}

/// The README's table of variables (between its `env-table` markers).
pub fn readme_table() -> String {
    let mut out = String::from("| variable | key | type |\n|---|---|---|\n");
    for key in KEYS {
        let kind = match key.kind {
            Str | Hidden => "string",
            Int => "integer",
            Float => "number",
            Bool => "`true` / `false`",
            List => "comma-separated list",
            Secret => "`env:NAME` or `file:/path`",
            SecretList => "comma-separated `env:NAME` / `file:/path`",
        };
        let path = if key.is_route() {
            format!("`[[route]] {}` (the single route)", key.name)
        } else if key.table.is_empty() {
            format!("`{}`", key.name)
        } else {
            format!("`[{}] {}`", key.table, key.name)
        };
        let _ = writeln!(out, "| `{}` | {path} | {kind} |", key.var());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashMap;

    use serde::Deserialize;
    use serde::de::{self, Deserializer, Visitor};

    use super::super::raw::*;
    use super::super::tests::keys;
    use super::super::{Config, Env, HostHeader, from_str};
    use super::*;

    /// Variables: both the settings and what `env:` references read.
    struct Vars(HashMap<&'static str, &'static str>);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn settings(&self, prefix: &str) -> Vec<(String, String)> {
            self.0
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        }
    }

    fn vars(extra: &[(&'static str, &'static str)]) -> Vars {
        let mut m = HashMap::from([
            ("SECRET", "wbhsec_abc"),
            (
                "SPOOL_KEY",
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            ),
        ]);
        m.extend(extra.iter().copied());
        Vars(m)
    }

    const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"env:SECRET\"]\n";
    const TWO_ROUTES: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"env:SECRET\"]\n[[route]]\npath = \"/b\"\nsecrets = [\"env:SECRET\"]\n";

    fn load(text: &str, env: &Vars) -> Result<super::super::Effective, Vec<Problem>> {
        super::super::compile(text, std::path::Path::new("."), env, "text")
    }

    #[test]
    fn variables_override_each_kind_of_value() {
        let env = vars(&[
            ("PERSONA_GUARD_REPLAY_TTL", "48h"),
            ("PERSONA_GUARD_SERVER_THREADS", "3"),
            ("PERSONA_GUARD_UPSTREAM_VERIFY", "false"),
            ("PERSONA_GUARD_UPSTREAM_HOST_HEADER", "upstream"),
            (
                "PERSONA_GUARD_SERVER_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.0.1",
            ),
            (
                "PERSONA_GUARD_ROUTE_EVENTS",
                "inquiry.*,report.run.completed",
            ),
            ("PERSONA_GUARD_ROUTE_SECRETS", "env:SECRET, env:OTHER"),
            ("OTHER", "wbhsec_other"),
            ("PERSONA_GUARD_SPOOL_KEY", "env:SPOOL_KEY"),
            ("PERSONA_GUARD_REPLAY_CAPACITY", "1_000"),
            ("PERSONA_GUARD_UNMATCHED", "deny"),
        ]);
        let file = format!("[replay]\nttl = \"80h\"\n{ROUTE}");
        let c: Config = load(&file, &env).unwrap().config;
        assert_eq!(c.replay.ttl, std::time::Duration::from_secs(48 * 3600));
        assert_eq!(c.threads, 3);
        assert!(!c.upstream.verify);
        assert_eq!(c.upstream.host_header, HostHeader::Upstream);
        assert_eq!(c.replay.capacity, 1000);
        assert_eq!(c.unmatched, super::super::Unmatched::Deny);
        assert!(c.routes[0].allows("inquiry.approved"));
        assert!(!c.routes[0].allows("case.created"));
        let secrets: Vec<&[u8]> = c.routes[0].secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(secrets, vec![&b"wbhsec_abc"[..], b"wbhsec_other"]);
        assert!(c.spool.key.is_some());
        assert_eq!(c.routes[0].path, "/a");
    }

    #[test]
    fn print_shows_where_each_value_came_from() {
        let env = vars(&[("PERSONA_GUARD_REPLAY_TTL", "48h")]);
        let file = format!("[server]\ngrace_period = \"20s\"\n{ROUTE}");
        let printed = load(&file, &env).unwrap().printed;
        for line in [
            "ttl = \"48h\"  # env PERSONA_GUARD_REPLAY_TTL",
            "grace_period = \"20s\"  # file",
            "body_timeout = \"10s\"  # default",
            "path = \"/a\"  # file",
            "secrets = [\"env:SECRET\"]  # file",
            "# threads not set: the number of CPUs  # default",
            "[[route]]",
            "# [listen.tls]",
        ] {
            assert!(printed.lines().any(|l| l == line), "{line}\n{printed}");
        }
        // The printed configuration is TOML (comments aside) and loads back.
        let again = from_str(&printed, &vars(&[])).unwrap();
        assert_eq!(again.replay.ttl, std::time::Duration::from_secs(48 * 3600));
    }

    #[test]
    fn print_never_shows_a_secret() {
        let env = vars(&[(
            "PERSONA_GUARD_REPLAY_REDIS_URL",
            "redis://:LEAKCANARY@r:6379",
        )]);
        let file = "[replay]\nstore = \"redis\"\nredis_password = \"LEAKCANARY_PW\"\n[[route]]\npath = \"/a\"\nsecrets = [\"LEAKCANARY_LITERAL\", \"env:SECRET\"]\n";
        let printed = load(file, &env).unwrap().printed;
        assert!(!printed.contains("LEAKCANARY"), "{printed}");
        assert!(!printed.contains("wbhsec_abc"), "{printed}");
        assert!(printed.contains("secrets = [\"<redacted>\", \"env:SECRET\"]  # file"));
        assert!(
            printed.contains("redis_url = \"<redacted>\"  # env PERSONA_GUARD_REPLAY_REDIS_URL")
        );
    }

    #[test]
    fn an_unknown_variable_is_an_error() {
        let env = vars(&[
            ("PERSONA_GUARD_REPLAY_TTLL", "48h"),
            ("PERSONA_GUARD_BIN", "/x"),
        ]);
        let p = load(ROUTE, &env).unwrap_err();
        assert_eq!(keys(&p), vec!["PERSONA_GUARD_REPLAY_TTLL"]);
    }

    #[test]
    fn a_variable_an_env_reference_names_is_a_secret_not_a_setting() {
        // The example file's spool key: a literal key in a variable that the
        // naming rule would also read as `spool.key`.
        let env = vars(&[(
            "PERSONA_GUARD_SPOOL_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )]);
        let file = format!("[spool]\nkey = \"env:PERSONA_GUARD_SPOOL_KEY\"\n{ROUTE}");
        assert!(load(&file, &env).unwrap().config.spool.key.is_some());
        // Named by a reference a variable sets: also a secret.
        let env = vars(&[
            (
                "PERSONA_GUARD_ROUTE_SECRETS",
                "env:PERSONA_GUARD_HOOK_SECRET",
            ),
            ("PERSONA_GUARD_HOOK_SECRET", "wbhsec_x"),
            ("PERSONA_GUARD_ROUTE_PATH", "/a"),
        ]);
        let c = load("", &env).unwrap().config;
        assert_eq!(c.routes[0].secrets[0].expose(), b"wbhsec_x");
        // Not named by any reference: a literal in PERSONA_GUARD_SPOOL_KEY is refused.
        let env = vars(&[("PERSONA_GUARD_SPOOL_KEY", "LEAKCANARY0123")]);
        let p = load(ROUTE, &env).unwrap_err();
        assert_eq!(keys(&p), vec!["PERSONA_GUARD_SPOOL_KEY"]);
        assert!(!p[0].message.contains("LEAKCANARY"));
    }

    #[test]
    fn a_bad_value_names_the_variable_never_the_value() {
        let env = vars(&[
            ("PERSONA_GUARD_SERVER_THREADS", "LEAKCANARY"),
            ("PERSONA_GUARD_UPSTREAM_TLS", "LEAKCANARY"),
        ]);
        let p = load(ROUTE, &env).unwrap_err();
        assert_eq!(
            keys(&p),
            vec!["PERSONA_GUARD_SERVER_THREADS", "PERSONA_GUARD_UPSTREAM_TLS"]
        );
        // Found bad by validation: named by the variable, with the key.
        let env = vars(&[
            ("PERSONA_GUARD_REPLAY_TTL", "LEAKCANARY"),
            ("PERSONA_GUARD_SERVER_THREADS", "-1"),
            (
                "PERSONA_GUARD_ROUTE_SECRETS",
                "env:LEAKCANARY_UNSET_VARIABLE_NAME_X",
            ),
        ]);
        let p2 = load(ROUTE, &env).unwrap_err();
        assert_eq!(
            keys(&p2),
            vec!["PERSONA_GUARD_SERVER_THREADS (server.threads)"],
            "{p2:?}"
        );
        let env = vars(&[
            ("PERSONA_GUARD_REPLAY_TTL", "LEAKCANARY"),
            ("PERSONA_GUARD_ROUTE_SECRETS", "env:NOT_SET_HERE"),
        ]);
        let p3 = load(ROUTE, &env).unwrap_err();
        assert_eq!(
            keys(&p3),
            vec![
                "PERSONA_GUARD_REPLAY_TTL (replay.ttl)",
                "PERSONA_GUARD_ROUTE_SECRETS (route[0].secrets[0])"
            ]
        );
        for p in p.iter().chain(&p2).chain(&p3) {
            assert!(!p.message.contains("LEAKCANARY"), "{p:?}");
        }
    }

    #[test]
    fn route_variables_and_the_number_of_routes() {
        // No route in the file: the variables make one.
        let env = vars(&[
            ("PERSONA_GUARD_ROUTE_PATH", "/hooks"),
            ("PERSONA_GUARD_ROUTE_SECRETS", "env:SECRET"),
        ]);
        let c = load("", &env).unwrap().config;
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].path, "/hooks");
        // One route: overridden.
        let c = load(ROUTE, &env).unwrap().config;
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].path, "/hooks");
        // Two: each route variable is an error.
        let p = load(TWO_ROUTES, &env).unwrap_err();
        assert_eq!(
            keys(&p),
            vec!["PERSONA_GUARD_ROUTE_PATH", "PERSONA_GUARD_ROUTE_SECRETS"]
        );
        assert!(p[0].message.contains("2 routes"));
        // Two routes and only non-route variables: fine.
        let env = vars(&[("PERSONA_GUARD_REPLAY_TTL", "48h")]);
        assert_eq!(load(TWO_ROUTES, &env).unwrap().config.routes.len(), 2);
        // No route anywhere: the usual problem.
        assert!(load("", &vars(&[])).is_err());
    }

    #[test]
    fn a_literal_secret_in_a_variable_is_refused() {
        for (var, value) in [
            ("PERSONA_GUARD_ROUTE_SECRETS", "wbhsec_LEAKCANARY"),
            (
                "PERSONA_GUARD_ROUTE_SECRETS",
                "env:SECRET,wbhsec_LEAKCANARY",
            ),
            ("PERSONA_GUARD_REPLAY_REDIS_PASSWORD", "LEAKCANARY"),
        ] {
            let p = load(ROUTE, &vars(&[(var, value)])).unwrap_err();
            assert_eq!(keys(&p), vec![var]);
            assert!(!p[0].message.contains("LEAKCANARY"));
        }
    }

    #[test]
    fn variable_names_follow_the_rule() {
        let names: Vec<String> = KEYS.iter().map(Key::var).collect();
        for n in [
            "PERSONA_GUARD_UPSTREAM_ADDRESS",
            "PERSONA_GUARD_REPLAY_TTL",
            "PERSONA_GUARD_SERVER_GRACE_PERIOD",
            "PERSONA_GUARD_SPOOL_MAX_AGE",
            "PERSONA_GUARD_UNMATCHED",
            "PERSONA_GUARD_LOG_FORMAT",
            "PERSONA_GUARD_LISTEN_TLS_CERT",
            "PERSONA_GUARD_ROUTE_PATH",
            "PERSONA_GUARD_ROUTE_SECRETS",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for r in RESERVED {
            assert!(!names.iter().any(|x| x == r));
        }
    }

    /// A deserializer that records the field names a struct asks for.
    struct Fields(Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    fn fields<T: Deserialize<'static>>() -> BTreeSet<&'static str> {
        let f = Fields(Cell::new(&[]));
        let _ = T::deserialize(&f);
        f.0.get().iter().copied().collect()
    }

    /// [`KEYS`] is every scalar key of the `Raw*` structs: a key or table
    /// added there and not here (or the reverse) fails this test.
    #[test]
    fn the_key_list_is_the_raw_structs() {
        let tables: Vec<(&str, BTreeSet<&str>, &[&str])> = vec![
            (
                "",
                fields::<RawConfig>(),
                &[
                    "listen", "admin", "server", "upstream", "replay", "headers", "spool",
                    "tracing", "route",
                ],
            ),
            ("listen", fields::<RawListen>(), &["tls"]),
            ("listen.tls", fields::<RawTls>(), &[]),
            ("admin", fields::<RawAdmin>(), &[]),
            ("server", fields::<RawServer>(), &[]),
            ("upstream", fields::<RawUpstream>(), &[]),
            ("replay", fields::<RawReplay>(), &[]),
            ("headers", fields::<RawHeaders>(), &[]),
            ("spool", fields::<RawSpool>(), &[]),
            ("tracing", fields::<RawTracing>(), &[]),
            ("route", fields::<RawRoute>(), &[]),
        ];
        for (table, all, sub) in &tables {
            assert!(!all.is_empty(), "{table}");
            let scalars: BTreeSet<&str> =
                all.iter().copied().filter(|f| !sub.contains(f)).collect();
            let listed: BTreeSet<&str> = KEYS
                .iter()
                .filter(|k| k.table == *table)
                .map(|k| k.name)
                .collect();
            assert_eq!(scalars, listed, "table `{table}`");
        }
        let known: BTreeSet<&str> = tables.iter().map(|t| t.0).collect();
        assert!(KEYS.iter().all(|k| known.contains(k.table)));
    }

    /// The defaults `check --print` shows are the loader's: written out
    /// explicitly they give the configuration an empty file gives.
    #[test]
    fn printed_defaults_are_the_defaults() {
        let mut text = String::new();
        let mut current = None;
        for key in KEYS.iter().filter(|k| k.table != "route") {
            let Def::Value(d) = key.default else { continue };
            if current != Some(key.table) {
                current = Some(key.table);
                if !key.table.is_empty() {
                    text.push_str(&format!("[{}]\n", key.table));
                }
            }
            text.push_str(&format!("{} = {d}\n", key.name));
        }
        text.push_str("[[route]]\n");
        for key in KEYS.iter().filter(|k| k.table == "route") {
            if let Def::Value(d) = key.default {
                text.push_str(&format!("{} = {d}\n", key.name));
            }
        }
        text.push_str("path = \"/a\"\nsecrets = [\"env:SECRET\"]\n");
        let explicit = from_str(&text, &vars(&[])).unwrap();
        let implicit = from_str(ROUTE, &vars(&[])).unwrap();
        assert_eq!(format!("{explicit:?}"), format!("{implicit:?}"));
        // The Redis-only defaults, with the Redis store.
        let redis = "[replay]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n";
        let mut explicit = redis.to_string();
        explicit.push_str("redis_timeout = \"500ms\"\nkey_prefix = \"persona-guard:\"\non_store_error = \"reject\"\n");
        let a = from_str(&format!("{explicit}{ROUTE}"), &vars(&[])).unwrap();
        let b = from_str(&format!("{redis}{ROUTE}"), &vars(&[])).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    /// Prints the README's table: `cargo test --lib print_readme_table -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn print_readme_table() {
        print!("{}", readme_table());
    }

    /// The README's table of variables is [`readme_table`], exactly.
    #[test]
    fn the_readme_lists_exactly_the_variables() {
        let readme = include_str!("../../README.md");
        let start = "<!-- env-table: generated by config::env::readme_table -->\n";
        let end = "<!-- /env-table -->";
        let from = readme.find(start).expect("README env-table marker") + start.len();
        let to = from
            + readme[from..]
                .find(end)
                .expect("README env-table end marker");
        assert_eq!(
            &readme[from..to],
            readme_table(),
            "regenerate the README table from config::env::readme_table()"
        );
    }
}
