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
//! the table in `docs/configuration.md` come from it, and a test holds it equal to the `Raw*`
//! structs' fields (a new table or key added there fails that test until it
//! is listed here).
//!
//! # Values
//!
//! A variable's string is read as the key's TOML type: strings as they are
//! (durations and sizes are strings already), integers and booleans parsed,
//! lists split on `,` (each item trimmed). The keys that hold secret
//! references (`route.secrets`, `admin.token`, `replay.redis_password`,
//! `spool.key`) take only `env:NAME` or `file:/path`: a secret itself is
//! never read from a `PERSONA_GUARD_*` value. Problems name the variable, never its value.
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

mod keys;

use Def::{Unset, Value as V};
use Kind::{Bool, Float, Hidden, Int, List, Secret, SecretList, Str};
pub use keys::{Def, KEYS, Key, Kind};

/// Every variable name starts with this.
pub const PREFIX: &str = "PERSONA_GUARD_";

/// `PERSONA_GUARD_*` variables persona-guard documents for other uses.
pub const RESERVED: &[&str] = &["PERSONA_GUARD_BIN"];

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
                "is not a persona-guard setting (docs/configuration.md, \"Environment variables\", lists every one); unset it or fix its name",
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
    add(sub("admin", "token"));
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

/// The table of variables in `docs/configuration.md` (between its `env-table` markers).
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
mod tests;
