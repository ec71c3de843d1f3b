//! Unknown keys: the parsed file is walked against the schema (the tables and
//! keys of [`KEYS`]) and **every** key or table it does not know is reported,
//! by name and line, with the closest allowed name as a suggestion
//! (`tolerence` → `tolerance`). A key that looks like a secret pasted in the
//! wrong place (it starts with `wbhsec_`, or is long with no word structure)
//! is reported by its line alone. Values are never shown.

use std::collections::BTreeSet;

use toml_edit::{Item, Key, Value};

use super::error::{Problem, position};
use super::schema::KEYS;

/// A suggestion is made only from this Jaro-Winkler similarity up.
const SIMILAR: f64 = 0.8;

/// A key this long or longer with no word structure may be a secret.
const LONG: usize = 24;

/// Every unknown key and table of the file `text` parsed to `root`, in the
/// order of their lines.
pub(super) fn find(text: &str, root: &toml_edit::Table) -> Vec<Problem> {
    let mut found = Vec::new();
    walk(text, "", "(top level)", entries(root), &mut found);
    found.sort_by_key(|(line, _)| *line);
    found.into_iter().map(|(_, p)| p).collect()
}

/// The names allowed in the schema's table `table` (`""`, `listen.tls`,
/// `route`): its keys, then its sub-tables.
fn allowed(table: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = KEYS
        .iter()
        .filter(|k| k.table == table)
        .map(|k| k.name)
        .collect();
    let subs: BTreeSet<&'static str> = KEYS
        .iter()
        .filter_map(|k| sub_table(table, k.table))
        .collect();
    names.extend(subs);
    names
}

/// The first part of `path` below `table` (`listen` for `listen.tls` under
/// `""`, `tls` under `listen`), if `path` is below it.
fn sub_table(table: &str, path: &'static str) -> Option<&'static str> {
    let rest = if table.is_empty() {
        path
    } else {
        path.strip_prefix(table)?.strip_prefix('.')?
    };
    (!rest.is_empty()).then(|| rest.split('.').next().unwrap_or(rest))
}

/// Whether `path` is a table of the schema.
fn is_table(path: &str) -> bool {
    KEYS.iter().any(|k| k.table == path)
}

/// One table of the file: its unknown entries reported, its known sub-tables
/// walked in turn. `schema` is the table's path in the schema (`route`),
/// `shown` as problems name it (`route[0]`).
fn walk(
    text: &str,
    schema: &str,
    shown: &str,
    entries: Vec<(&Key, &Item)>,
    found: &mut Vec<(usize, Problem)>,
) {
    let names = allowed(schema);
    for (key, item) in entries {
        let name = key.get();
        let line = line_of(text, key, item);
        if !names.contains(&name) {
            found.push((line, unknown(shown, name, line, item, &names)));
            continue;
        }
        let path = if schema.is_empty() {
            name.to_string()
        } else {
            format!("{schema}.{name}")
        };
        if !is_table(&path) {
            continue;
        }
        let shown = if schema.is_empty() {
            name.to_string()
        } else {
            format!("{shown}.{name}")
        };
        for (i, table) in tables(item).into_iter().enumerate() {
            let shown = match item {
                Item::ArrayOfTables(_) | Item::Value(Value::Array(_)) => format!("{shown}[{i}]"),
                _ => shown.clone(),
            };
            walk(text, &path, &shown, table, found);
        }
    }
}

/// The entries of the table (or of each table of the array) `item` holds; a
/// value of another type has none here (`doc` reports its type).
pub(super) fn tables(item: &Item) -> Vec<Vec<(&Key, &Item)>> {
    match item {
        Item::Table(t) => vec![entries(t)],
        Item::ArrayOfTables(a) => a.iter().map(entries).collect(),
        Item::Value(Value::InlineTable(t)) => vec![inline(t)],
        Item::Value(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_inline_table)
            .map(inline)
            .collect(),
        _ => Vec::new(),
    }
}

/// A table's entries with their keys (which carry the spans).
pub(super) fn entries(t: &toml_edit::Table) -> Vec<(&Key, &Item)> {
    t.iter().filter_map(|(n, _)| t.get_key_value(n)).collect()
}

fn inline(t: &toml_edit::InlineTable) -> Vec<(&Key, &Item)> {
    t.iter().filter_map(|(n, _)| t.get_key_value(n)).collect()
}

/// The line of a key: its own span, or its table's header, or its first
/// entry's (a table made implicitly by a dotted header).
fn line_of(text: &str, key: &Key, item: &Item) -> usize {
    let span = key.span().or_else(|| item.span()).or_else(|| {
        tables(item)
            .first()
            .and_then(|t| t.first())
            .and_then(|(k, i)| k.span().or_else(|| i.span()))
    });
    span.map_or(0, |s| position(text, s.start).0)
}

/// The problem for one unknown key.
fn unknown(shown: &str, name: &str, line: usize, item: &Item, names: &[&str]) -> Problem {
    let what = match item {
        Item::Table(t) if !t.is_dotted() => "table",
        Item::ArrayOfTables(_) => "table",
        _ => "key",
    };
    let at = if line > 0 {
        format!(" (line {line})")
    } else {
        String::new()
    };
    let message = if looks_like_secret(name) {
        format!(
            "unknown {what}{at}, not repeated here: it may be a misplaced secret; {}",
            listed(names)
        )
    } else {
        match suggest(name, names) {
            Some(s) => format!(
                "unknown {what} {}{at}; did you mean `{s}`?",
                shown_name(name)
            ),
            None => format!("unknown {what} {}{at}; {}", shown_name(name), listed(names)),
        }
    };
    Problem {
        key: shown.to_string(),
        message,
    }
}

/// The allowed names, for a key with no close match.
fn listed(names: &[&str]) -> String {
    if names.is_empty() {
        return "this table takes no keys".to_string();
    }
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("the keys allowed here are {}", list.join(", "))
}

/// A key's name as shown: bare in backticks, or quoted with escapes when it
/// is not a bare key (so no control character or backtick reaches the output).
fn shown_name(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("`{name}`")
    } else {
        format!("{name:?}")
    }
}

/// The allowed name closest to `name`, if it is close enough.
pub(super) fn suggest<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    let norm = name.to_ascii_lowercase().replace('-', "_");
    names
        .iter()
        .map(|n| (strsim::jaro_winkler(&norm, n), *n))
        .filter(|(score, _)| *score >= SIMILAR)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

/// Whether a key looks like a secret pasted in the wrong place: it starts
/// with `wbhsec_` (Persona's prefix), or it is long and is not made of words
/// (parts separated by `_`, `-`, `.` or spaces, each letters of one case,
/// perhaps followed by digits).
pub(super) fn looks_like_secret(name: &str) -> bool {
    if name.to_ascii_lowercase().starts_with("wbhsec_") {
        return true;
    }
    if name.chars().count() < LONG {
        return false;
    }
    let parts: Vec<&str> = name
        .split(['_', '-', '.', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    !(parts.len() >= 2 && parts.iter().all(|p| is_word(p)))
}

/// A part of a name that reads as a word: up to 20 ASCII letters of one case,
/// with a vowel, perhaps followed by digits (`client2`).
fn is_word(part: &str) -> bool {
    let letters = part.trim_end_matches(|c: char| c.is_ascii_digit());
    let one_case = letters.chars().all(|c| c.is_ascii_lowercase())
        || letters.chars().all(|c| c.is_ascii_uppercase());
    !letters.is_empty()
        && letters.len() <= 20
        && one_case
        && letters
            .to_ascii_lowercase()
            .contains(['a', 'e', 'i', 'o', 'u', 'y'])
}

#[cfg(test)]
mod tests;
