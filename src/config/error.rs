//! Problems and how they are reported: [`Problem`] (a key and what to do),
//! [`ConfigError`] (every problem of one file), and the messages of the TOML
//! layer rebuilt so that they never quote the file.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One thing wrong with the file: the key and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
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
pub(super) fn position(text: &str, at: usize) -> (usize, usize) {
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

/// One line of the parser's message, if it is made of allowed words only.
fn syntax_part(line: &str) -> Option<String> {
    if let Some(label) = line.strip_prefix("invalid ") {
        let l = SYNTAX_LABELS.iter().find(|l| **l == label)?;
        Some(format!("invalid {l}"))
    } else if let Some(list) = line.strip_prefix("expected ") {
        let items: Vec<String> = list.split(", ").filter_map(expected_token).collect();
        (!items.is_empty()).then(|| format!("expected {}", items.join(", ")))
    } else if line.starts_with("duplicate key") {
        Some("a key or table is defined twice (its name is not repeated here)".to_string())
    } else if line.starts_with("dotted key") {
        Some("a dotted key extends a value that is not a table".to_string())
    } else {
        let c = SYNTAX_CAUSES.iter().find(|c| **c == line)?;
        Some((*c).to_string())
    }
}

/// A TOML syntax error (the parser's `message` and `span`) as a problem with its line and column that never quotes the
/// file. The parser's message may hold text from the file (a duplicate key's
/// name), so it is not passed on: it is rebuilt from an allow-list of the
/// parser's fixed phrases (`invalid basic string`), grammar tokens (`expected
/// `"``) and rewordings; anything unrecognised is dropped.
pub(super) fn syntax_problem(text: &str, message: &str, span: Option<Range<usize>>) -> Problem {
    let mut parts: Vec<String> = message
        .lines()
        .map(str::trim)
        .filter_map(syntax_part)
        .collect();
    if parts.is_empty() {
        parts.push("invalid TOML (a control character or malformed syntax)".to_string());
    }
    let mut message = parts.join("; ");
    match span {
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

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys};

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
