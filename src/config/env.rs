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
//! [`KEYS`] (the schema, `schema.rs`) is the one list of keys: the overlay,
//! `check --print` and the table in `docs/configuration.md` come from it.
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

use super::doc::{Doc, Field, Val};
use super::error::Problem;
use super::secret::Env;

pub use super::schema::{Def, KEYS, Key, Kind, PREFIX};
use Def::{Unset, Value as V};
use Kind::{Bool, Float, Int, List, Secret, SecretList, SecretMap};

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

/// The parsed file with the environment laid over it: each variable's value
/// set into `doc`, every value's origin recorded. Problems name variables only.
pub(super) fn overlay(doc: &mut Doc, env: &dyn Env) -> Result<Provenance, Vec<Problem>> {
    let mut prov = Provenance(
        doc.values
            .keys()
            .map(|k| (k.clone(), Origin::File))
            .collect(),
    );
    let vars: BTreeMap<String, String> = env
        .settings(PREFIX)
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    let by_var: BTreeMap<String, &Key> = KEYS.iter().map(|k| (k.var(), k)).collect();

    let referenced = referenced(doc, &vars, &by_var);

    let routes = doc.routes;
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
            Ok(val) => {
                let path = if key.is_route() {
                    doc.routes = 1;
                    key.route_path(0)
                } else {
                    key.path()
                };
                doc.values.insert(path.clone(), Field { val, line: 0 });
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

/// Variables named by an `env:` reference (in the file, or in a reference
/// a variable sets): they hold secrets, never settings.
fn referenced(
    doc: &Doc,
    vars: &BTreeMap<String, String>,
    by_var: &BTreeMap<String, &Key>,
) -> BTreeSet<String> {
    let mut referenced = BTreeSet::new();
    let refs = doc.values.iter().filter_map(|(path, f)| {
        let key = super::schema::key_at(path)?;
        matches!(key.kind, Secret | SecretList | SecretMap).then_some(&f.val)
    });
    for val in refs {
        match val {
            Val::Str(s) => add_ref(s, &mut referenced),
            Val::List(l) => l.iter().for_each(|s| add_ref(s, &mut referenced)),
            Val::Map(m) => m.iter().for_each(|(_, s)| add_ref(s, &mut referenced)),
            _ => {}
        }
    }
    for (name, value) in vars {
        if let Some(key) = by_var.get(name)
            && matches!(key.kind, Secret | SecretList | SecretMap)
            && !referenced.contains(name)
        {
            split(value)
                .map(|s| s.split_once('=').map_or(s, |(_, v)| v.trim()))
                .for_each(|s| add_ref(s, &mut referenced));
        }
    }

    referenced
}

fn add_ref(spec: &str, out: &mut BTreeSet<String>) {
    if let Some(n) = spec.strip_prefix("env:") {
        out.insert(n.to_string());
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
fn parse(kind: Kind, value: &str) -> Result<Val, &'static str> {
    let reference = |s: &str| s.starts_with("env:") || s.starts_with("file:");
    const NOT_A_REF: &str = "must be `env:NAME` or `file:/path` (comma-separated for a list): a secret is never given in a PERSONA_GUARD_ variable itself (the value is not repeated here)";
    Ok(match kind {
        Int => Val::Int(
            value
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| "is not an integer (the value is not repeated here)")?,
        ),
        Float => Val::Float(
            value
                .trim()
                .parse()
                .map_err(|_| "is not a number (the value is not repeated here)")?,
        ),
        Bool => match value.trim() {
            "true" => Val::Bool(true),
            "false" => Val::Bool(false),
            _ => return Err("must be `true` or `false` (the value is not repeated here)"),
        },
        List => Val::List(split(value).map(String::from).collect()),
        Secret => {
            let v = value.trim();
            if !reference(v) {
                return Err(NOT_A_REF);
            }
            Val::Str(v.to_string())
        }
        SecretList => {
            let items: Vec<&str> = split(value).collect();
            if items.iter().any(|s| !reference(s)) {
                return Err(NOT_A_REF);
            }
            Val::List(items.into_iter().map(String::from).collect())
        }
        SecretMap => {
            let mut pairs = Vec::new();
            for item in split(value) {
                let Some((name, spec)) = item.split_once('=') else {
                    return Err(
                        "must be `Name=env:VAR` pairs, comma-separated (the value is not repeated here)",
                    );
                };
                if !reference(spec.trim()) {
                    return Err(NOT_A_REF);
                }
                pairs.push((name.trim().to_string(), spec.trim().to_string()));
            }
            Val::Map(pairs)
        }
        _ => Val::Str(value.to_string()),
    })
}

/// The effective configuration in TOML form: every key with its value or
/// default, each annotated with where it came from. Secret references are
/// shown as written; a literal secret and `redis_url` are `"<redacted>"`.
pub(super) fn render(doc: &Doc, prov: &Provenance, source: &str) -> String {
    let mut out = format!(
        "# persona-guard: the effective configuration ({source}; environment variables PERSONA_GUARD_*)\n"
    );
    let mut current = None;
    for key in KEYS.iter().filter(|k| !k.is_route()) {
        if current != Some(key.table) {
            current = Some(key.table);
            // A table with no value at all is shown commented out: an empty
            // `[listen.tls]` would mean TLS without its files.
            let empty = KEYS
                .iter()
                .filter(|k| k.table == key.table)
                .all(|k| !doc.has(&k.path()) && matches!(k.default, Unset(_)));
            if !key.table.is_empty() {
                let hash = if empty { "# " } else { "" };
                let _ = write!(out, "\n{hash}[{}]\n", key.table);
            }
        }
        let path = key.path();
        line(&mut out, key, doc.get(&path), prov.get(&path));
    }
    if doc.routes == 0 {
        out.push_str("\n# no [[route]]\n");
    }
    for i in 0..doc.routes {
        out.push_str("\n[[route]]\n");
        let mut table = "";
        for key in KEYS.iter().filter(|k| k.is_route()) {
            let path = key.route_path(i);
            if key.route_table() != table {
                table = key.route_table();
                let set = doc.has_table(&format!("route[{i}].{table}"));
                match set {
                    true => out.push_str(&format!("[route.{table}]\n")),
                    // A route's table not written is not shown key by key:
                    // its defaults would turn it on.
                    false => out.push_str(&format!("# [route.{table}] not set: {}\n", unset(key))),
                }
            }
            let shown = key.route_table().is_empty()
                || doc.has_table(&format!("route[{i}].{}", key.route_table()));
            if shown {
                line(&mut out, key, doc.get(&path), prov.get(&path));
            }
        }
    }
    out
}

/// What leaving `key` unset means, from its schema default.
fn unset(key: &Key) -> &'static str {
    match key.default {
        Unset(what) => what,
        V(_) => "its defaults apply",
    }
}

fn line(out: &mut String, key: &Key, value: Option<&Val>, origin: Option<&Origin>) {
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
fn shown(kind: Kind, v: &Val) -> String {
    let safe = |s: &str| s.starts_with("env:") || s.starts_with("file:");
    let item = |s: &str| {
        if safe(s) {
            Val::Str(s.to_string()).toml()
        } else {
            "\"<redacted>\"".into()
        }
    };
    match (kind.secret(), v) {
        (false, v) => v.toml(),
        (true, Val::List(a)) if kind != Kind::Hidden => {
            let items: Vec<String> = a.iter().map(|s| item(s)).collect();
            format!("[{}]", items.join(", "))
        }
        (true, Val::Str(s)) if kind != Kind::Hidden => item(s),
        (true, Val::Map(m)) => super::doc::map_toml(m.iter().map(|(k, v)| {
            let shown = item(v);
            (k, toml::Value::String(shown.trim_matches('"').to_string()))
        })),
        _ => "\"<redacted>\"".into(),
    }
}

/// The table of variables in `docs/configuration.md` (between its `env-table` markers).
pub fn readme_table() -> String {
    let mut out = String::from("| variable | key | type |\n|---|---|---|\n");
    for key in KEYS {
        let kind = match key.kind {
            Int => "integer",
            Float => "number",
            Bool => "`true` / `false`",
            List => "comma-separated list",
            Secret => "`env:NAME` or `file:/path`",
            SecretList => "comma-separated `env:NAME` / `file:/path`",
            SecretMap => "comma-separated `Name=env:NAME` / `Name=file:/path`",
            _ => "string",
        };
        let path = if key.is_route() && !key.route_table().is_empty() {
            format!(
                "`[route.{}] {}` (the single route)",
                key.route_table(),
                key.name
            )
        } else if key.is_route() {
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
