//! The file parsed once (`toml_edit`, with spans) and walked against the
//! schema: a [`Doc`], every value by its key path (`replay.ttl`,
//! `route[0].path`) with its line, each of the TOML type the schema gives.
//! Unknown keys are reported first (`unknown.rs`), then every value of the
//! wrong type, by key path and line: the messages are built from the
//! schema's words and the kind of value found, never from the value.

use std::collections::{BTreeMap, BTreeSet};

use toml_edit::{ImDocument, Item, Value};

use super::error::{Problem, position, syntax_problem};
use super::schema::{KEYS, Key, Ty};
use super::unknown;

/// A value of one of the schema's types.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<String>),
    /// Names to strings, in the file's order.
    Map(Vec<(String, String)>),
}

impl Val {
    /// The value in TOML form (for `check --print`).
    pub(super) fn toml(&self) -> String {
        let v = match self {
            Val::Str(s) => toml::Value::String(s.clone()),
            Val::Int(i) => toml::Value::Integer(*i),
            Val::Float(f) => toml::Value::Float(*f),
            Val::Bool(b) => toml::Value::Boolean(*b),
            Val::List(l) => {
                toml::Value::Array(l.iter().cloned().map(toml::Value::String).collect())
            }
            Val::Map(m) => {
                return map_toml(m.iter().map(|(k, v)| (k, toml::Value::String(v.clone()))));
            }
        };
        v.to_string()
    }
}

/// An inline table `{ "name" = value, ... }` of `entries`, in their order.
pub(super) fn map_toml<'a>(entries: impl Iterator<Item = (&'a String, toml::Value)>) -> String {
    let items: Vec<String> = entries
        .map(|(k, v)| format!("{} = {v}", toml::Value::String(k.clone())))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

/// A value and the line it is on (0: set by a variable).
#[derive(Debug, Clone)]
pub(super) struct Field {
    pub val: Val,
    pub line: usize,
}

/// The configuration as written (and, after `env::overlay`, with the
/// variables laid over it), before validation.
#[derive(Debug, Default)]
pub(super) struct Doc {
    /// Every value set, by key path.
    pub values: BTreeMap<String, Field>,
    /// The number of `[[route]]` tables.
    pub routes: usize,
    /// The sub-tables written (`listen.tls`), even empty.
    pub tables: BTreeSet<String>,
}

/// Typed reads of a value by key path: `None` when unset (the walk made sure
/// each value has the schema's type).
macro_rules! accessors {
    ($($(#[$doc:meta])* $name:ident -> $ty:ty: $pat:pat => $out:expr;)*) => {$(
        $(#[$doc])*
        pub(super) fn $name(&self, path: &str) -> Option<$ty> {
            match self.get(path)? {
                $pat => $out,
                _ => None,
            }
        }
    )*};
}

impl Doc {
    pub(super) fn get(&self, path: &str) -> Option<&Val> {
        self.values.get(path).map(|f| &f.val)
    }

    accessors! {
        str -> &str: Val::Str(s) => Some(s.as_str());
        /// A count (negative ones are refused by [`Doc::check_counts`]).
        count -> u64: Val::Int(i) => u64::try_from(*i).ok();
        float -> f64: Val::Float(f) => Some(*f);
        bool -> bool: Val::Bool(b) => Some(*b);
        list -> &[String]: Val::List(l) => Some(l.as_slice());
        map -> &[(String, String)]: Val::Map(m) => Some(m.as_slice());
    }

    pub(super) fn has(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }

    /// Whether the table at `path` is written or any key under it is set.
    pub(super) fn has_table(&self, path: &str) -> bool {
        let prefix = format!("{path}.");
        self.tables.contains(path) || self.values.keys().any(|k| k.starts_with(&prefix))
    }

    /// Every count that is negative (from the file or a variable).
    pub(super) fn check_counts(&self) -> Vec<Problem> {
        self.values
            .iter()
            .filter(|(_, f)| matches!(f.val, Val::Int(i) if i < 0))
            .map(|(path, f)| {
                kind_problem(
                    path,
                    "a whole number, 0 or more",
                    "a negative integer",
                    f.line,
                )
            })
            .collect()
    }
}

/// Parses `text` once: syntax, then unknown keys, then types.
pub(super) fn parse(text: &str) -> Result<Doc, Vec<Problem>> {
    let parsed =
        ImDocument::parse(text).map_err(|e| vec![syntax_problem(text, e.message(), e.span())])?;
    let root = parsed.as_table();
    let unknown = unknown::find(text, root);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut w = Walk {
        text,
        doc: Doc::default(),
        problems: Vec::new(),
    };
    w.table("", "", &unknown::entries(root));
    if w.problems.is_empty() {
        Ok(w.doc)
    } else {
        Err(w.problems)
    }
}

struct Walk<'t> {
    text: &'t str,
    doc: Doc,
    problems: Vec<Problem>,
}

impl Walk<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> usize {
        span.map_or(0, |s| position(self.text, s.start).0)
    }

    fn bad(
        &mut self,
        path: String,
        expected: &str,
        item: Found<'_>,
        span: Option<std::ops::Range<usize>>,
    ) {
        let line = self.line(span);
        self.problems
            .push(kind_problem(&path, expected, item.describe(), line));
    }

    /// One table of the file, at `schema` in the schema and `shown` as problems name it.
    fn table(&mut self, schema: &str, shown: &str, entries: &[(&toml_edit::Key, &Item)]) {
        for (key, item) in entries {
            let name = key.get();
            let path = join(shown, name);
            let span = item.span().or_else(|| key.span());
            if let Some(k) = KEYS.iter().find(|k| k.table == schema && k.name == name) {
                let line = self.line(span.clone());
                if let Some(val) = self.value(k, &path, item, span) {
                    self.doc.values.insert(path, Field { val, line });
                }
                continue;
            }
            // Not a key: a table of the schema (`unknown::find` let nothing else through).
            let sub = join(schema, name);
            let tables = unknown::tables(item);
            if sub == "route" {
                if !matches!(item, Item::ArrayOfTables(_) | Item::Value(Value::Array(_))) {
                    self.bad(path, "a list of tables", Found::Item(item), span);
                    continue;
                }
                if let Item::Value(Value::Array(a)) = item
                    && let Some((i, v)) = a.iter().enumerate().find(|(_, v)| !v.is_inline_table())
                {
                    self.bad(format!("route[{i}]"), "a table", Found::Value(v), v.span());
                    continue;
                }
                self.doc.routes = tables.len();
                for (i, t) in tables.iter().enumerate() {
                    self.table("route", &format!("route[{i}]"), t);
                }
            } else if let [t] = tables.as_slice()
                && !matches!(item, Item::ArrayOfTables(_) | Item::Value(Value::Array(_)))
            {
                self.doc.tables.insert(path.clone());
                self.table(&sub, &path, t);
            } else {
                self.bad(path, "a table", Found::Item(item), span);
            }
        }
    }

    /// The value of key `k` at `path`, if it has the schema's type.
    fn value(
        &mut self,
        k: &Key,
        path: &str,
        item: &Item,
        span: Option<std::ops::Range<usize>>,
    ) -> Option<Val> {
        let ty = k.kind.ty();
        if ty == Ty::Map {
            return self.map(path, item, span);
        }
        let Item::Value(v) = item else {
            self.bad(path.to_string(), expected(ty), Found::Item(item), span);
            return None;
        };
        Some(match (ty, v) {
            (Ty::Str, Value::String(s)) => Val::Str(s.value().clone()),
            (Ty::Int, Value::Integer(i)) => Val::Int(*i.value()),
            (Ty::Float, Value::Float(f)) => Val::Float(*f.value()),
            (Ty::Float, Value::Integer(i)) => Val::Float(*i.value() as f64),
            (Ty::Bool, Value::Boolean(b)) => Val::Bool(*b.value()),
            (Ty::List, Value::Array(a)) => {
                let mut items = Vec::new();
                for (j, e) in a.iter().enumerate() {
                    match e.as_str() {
                        Some(s) => items.push(s.to_string()),
                        None => {
                            self.bad(
                                format!("{path}[{j}]"),
                                "a string",
                                Found::Value(e),
                                e.span().or(span),
                            );
                            return None;
                        }
                    }
                }
                Val::List(items)
            }
            _ => {
                self.bad(path.to_string(), expected(ty), Found::Value(v), span);
                return None;
            }
        })
    }
}

impl Walk<'_> {
    /// A table of strings (`[route.x]`, or inline `x = { "A" = "b" }`).
    fn map(
        &mut self,
        path: &str,
        item: &Item,
        span: Option<std::ops::Range<usize>>,
    ) -> Option<Val> {
        let is_table = matches!(item, Item::Table(_) | Item::Value(Value::InlineTable(_)));
        let tables = unknown::tables(item);
        let ([entries], true) = (tables.as_slice(), is_table) else {
            self.bad(path.to_string(), "a table", Found::Item(item), span);
            return None;
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            match value.as_str() {
                Some(s) => out.push((key.get().to_string(), s.to_string())),
                None => {
                    let at = format!("{path}.{}", key.get());
                    self.bad(
                        at,
                        "a string",
                        Found::Item(value),
                        value.span().or(span.clone()),
                    );
                    return None;
                }
            }
        }
        Some(Val::Map(out))
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn expected(ty: Ty) -> &'static str {
    match ty {
        Ty::Str => "a string",
        Ty::Int => "a whole number, 0 or more",
        Ty::Float => "a number",
        Ty::Bool => "a boolean",
        Ty::List => "a list",
        Ty::Map => "a table",
    }
}

/// What was found where something else was expected: its kind only.
enum Found<'a> {
    Item(&'a Item),
    Value(&'a Value),
}

impl Found<'_> {
    fn describe(&self) -> &'static str {
        let v = match *self {
            Found::Item(Item::Value(v)) | Found::Value(v) => v,
            Found::Item(Item::ArrayOfTables(_)) => return "a list of tables",
            Found::Item(_) => return "a table",
        };
        match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a floating-point number",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "a list",
            Value::InlineTable(_) => "a table",
        }
    }
}

fn kind_problem(path: &str, expected: &str, found: &str, line: usize) -> Problem {
    let at = if line > 0 {
        format!(" (line {line})")
    } else {
        String::new()
    };
    Problem {
        key: path.to_string(),
        message: format!("expected {expected}, found {found}{at}"),
    }
}
