//! The [`Check`] collector: the one place a value of the file becomes a typed
//! one, read by its key path with the schema's default, recording a
//! [`Problem`] under the key instead of stopping, so one run reports every
//! mistake.
//!
//! Messages are `&'static str` ([`Check::problem`]) or built from computed
//! parts only ([`Check::problem_with`]): never from text of the file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::doc::Doc;
use super::error::Problem;
use super::schema::{self, Kind};
use super::secret::{self, Env, Secret};

/// Largest `max_body` (and any other in-memory size) accepted: the body is
/// held in memory while it is verified.
pub const MAX_MAX_BODY: u64 = 64 * 1024 * 1024;

/// Collects problems while converting the values of `doc`, each read by its
/// key path; relative paths are taken from `base`.
pub(super) struct Check<'e> {
    problems: Vec<Problem>,
    env: &'e dyn Env,
    doc: &'e Doc,
    base: &'e Path,
    /// Every address resolved in this load, by its text: each is looked up once.
    resolved: HashMap<String, Result<SocketAddr, String>>,
}

/// A reading of a key's text that failed: fixed words, never the text.
type Read<T> = Result<T, &'static str>;

impl<'e> Check<'e> {
    pub(super) fn new(env: &'e dyn Env, doc: &'e Doc, base: &'e Path) -> Self {
        Check {
            problems: Vec::new(),
            env,
            doc,
            base,
            resolved: HashMap::new(),
        }
    }

    /// The values being checked.
    pub(super) fn doc(&self) -> &'e Doc {
        self.doc
    }

    /// `value` if no problem was recorded, else every problem.
    pub(super) fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.problems)
        }
    }

    /// Records a problem. The message is fixed text: no value from the file.
    pub(super) fn problem(&mut self, key: impl Into<String>, message: &'static str) {
        self.problem_with(key, message.to_string());
    }

    /// Records a problem whose message has computed parts: numbers, durations
    /// we parsed, route indices, our own names; never text from the file.
    pub(super) fn problem_with(&mut self, key: impl Into<String>, message: String) {
        self.problems.push(Problem::new(key, message));
    }

    /// `key`'s text read by `read`, else its schema default read the same way
    /// (also when the text is refused, the problem recorded); `None`: unset
    /// with no default.
    pub(super) fn read<T>(&mut self, key: &str, read: fn(&str) -> Read<T>) -> Option<T> {
        if let Some(v) = self.doc.str(key) {
            match read(v) {
                Ok(t) => return Some(t),
                Err(message) => self.problem(key, message),
            }
        }
        schema::default_str(key).map(|d| read(d).expect("the schema's default is valid"))
    }

    /// One of the words of `key`'s schema row, as the value in the same
    /// place of `values` (the default word, else the first, when unset).
    pub(super) fn choice<T: Copy, const N: usize>(&mut self, key: &str, values: [T; N]) -> T {
        let Some(Kind::Choice(words)) = schema::key_at(key).map(|k| k.kind) else {
            unreachable!("{key} is a choice of the schema")
        };
        let at = |w: &str| words.iter().position(|x| *x == w);
        let v = self.doc.str(key);
        let i = match v.map(at) {
            Some(Some(i)) => i,
            unset_or_bad => {
                if unset_or_bad.is_some() {
                    let names: Vec<String> = words.iter().map(|n| format!("\"{n}\"")).collect();
                    let names = names.join(", ");
                    self.problem_with(
                        key,
                        format!("is not one of {names} (the value is not repeated here)"),
                    );
                }
                schema::default_str(key).and_then(at).unwrap_or(0)
            }
        };
        values[i]
    }

    /// A count that must be at least 1 (a 0 is reported and read as 1), or
    /// its schema default.
    pub(super) fn count(&mut self, key: &str) -> Option<u64> {
        match self.doc.count(key) {
            Some(0) => {
                self.problem(key, "must be at least 1");
                Some(1)
            }
            None => schema::default_str(key).and_then(|d| d.parse().ok()),
            other => other,
        }
    }

    /// A [`memory_size`].
    pub(super) fn size(&mut self, key: &str) -> u64 {
        self.read(key, memory_size).unwrap_or_default()
    }

    /// A duration greater than zero.
    pub(super) fn duration(&mut self, key: &str) -> Duration {
        self.read(key, parse_duration).unwrap_or_default()
    }

    /// `host:port` or `ip:port` resolved through [`Env::resolve`], once per
    /// distinct text in a load however many keys name it.
    pub(super) fn address(&mut self, key: &str, v: &str) -> SocketAddr {
        let env = self.env;
        let resolved = self
            .resolved
            .entry(v.to_string())
            .or_insert_with(|| env.resolve(v))
            .clone();
        resolved.unwrap_or_else(|msg| {
            self.problem_with(key, msg);
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// `key`'s text, or its schema default.
    pub(super) fn text(&self, key: &str) -> Option<&'e str> {
        self.doc.str(key).or_else(|| schema::default_str(key))
    }

    /// [`Check::address`] of `key`'s text or its schema default.
    pub(super) fn address_at(&mut self, key: &str) -> SocketAddr {
        let v = self.text(key).unwrap_or_default();
        self.address(key, v)
    }

    pub(super) fn header_name(&mut self, key: &str) -> HeaderName {
        self.read(key, |v| {
            HeaderName::from_bytes(v.as_bytes())
                .map(|h| canonical_header(&h))
                .map_err(|_| "is not a valid HTTP header name (the value is not repeated here); use letters, digits and `-`")
        })
        .unwrap_or(HeaderName::from_static("x-invalid"))
    }

    /// A secret spec (`env:NAME`, `file:/path` or a literal) read now.
    pub(super) fn secret(&mut self, key: impl Into<String>, spec: &str) -> Option<Secret> {
        secret::resolve_secret(spec, self.base, self.env)
            .map_err(|msg| self.problem_with(key, msg))
            .ok()
    }

    /// `key`'s secret spec if it is `env:` or `file:`; a literal is refused
    /// with `refused` (a key or token is not written in the file, where it
    /// would end up in backups and diffs).
    pub(super) fn reference(&mut self, key: &str, refused: &'static str) -> Option<&'e str> {
        let spec = self.doc.str(key)?;
        if spec.starts_with("env:") || spec.starts_with("file:") {
            return Some(spec);
        }
        self.problem(key, refused);
        None
    }

    /// `key`'s secret spec read now; see [`secret::read_source`].
    pub(super) fn source(&mut self, key: &str, spec: &str) -> Option<secret::Source> {
        secret::read_source(spec, self.base, self.env)
            .map_err(|msg| self.problem_with(key, msg))
            .ok()
    }

    /// `key`'s path, from the file's directory.
    pub(super) fn path(&self, key: &str) -> Option<PathBuf> {
        self.doc.str(key).map(|p| self.base.join(p))
    }

    /// Whether the file at `path` can be read (the path is never repeated).
    pub(super) fn readable(&mut self, key: &str, path: &Path) -> bool {
        match std::fs::read(path) {
            Ok(_) => true,
            Err(e) => {
                self.problem_with(
                    key,
                    format!(
                        "cannot read the file ({}; the path is not repeated here)",
                        secret::io_kind(&e)
                    ),
                );
                false
            }
        }
    }
}

/// A size such as "64KiB" or "1MiB".
pub(super) fn parse_size(v: &str) -> Read<u64> {
    // Not bytesize's message: it quotes the input.
    v.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(
        |_| "is not a size (the value is not repeated here); write e.g. \"64KiB\", \"1MiB\"",
    )
}

/// A size greater than zero and at most [`MAX_MAX_BODY`] (held in memory).
pub(super) fn memory_size(v: &str) -> Read<u64> {
    match parse_size(v)? {
        0 => Err("must be greater than zero"),
        b if b > MAX_MAX_BODY => Err("is over the limit of 64MiB (bodies are held in memory)"),
        b => Ok(b),
    }
}

/// A duration such as "300ms" or "5m", greater than zero.
pub(super) fn parse_duration(v: &str) -> Read<Duration> {
    match humantime::parse_duration(v) {
        Ok(d) if d.is_zero() => Err("must be greater than zero"),
        Ok(d) => Ok(d),
        // Not `e`: humantime's message quotes the unit it did not know.
        Err(_) => Err(
            "is not a duration (the value is not repeated here); write e.g. \"300ms\", \"30s\", \"5m\"",
        ),
    }
}

/// A duration of at least 1s.
pub(super) fn at_least_a_second(v: &str) -> Read<Duration> {
    let d = parse_duration(v)?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s");
    }
    Ok(d)
}

/// A header name compared the way frameworks do: lower-case, `_` as `-`.
pub fn canonical_header(name: &HeaderName) -> HeaderName {
    let s = name.as_str().replace('_', "-");
    HeaderName::from_bytes(s.as_bytes()).unwrap_or_else(|_| name.clone())
}
