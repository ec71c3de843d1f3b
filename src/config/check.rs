//! The [`Check`] collector: the one place a value of the file becomes a typed one
//! (sizes, durations, addresses, choices, header names, secrets, readable
//! files), recording a [`Problem`] under the value's key instead of stopping,
//! so one run reports every mistake.
//!
//! Messages are `&'static str` ([`Check::problem`]) or built from computed
//! parts only ([`Check::problem_with`]): never from text of the file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use super::defaults::MAX_MAX_BODY;
use super::doc::Doc;
use super::error::Problem;
use super::secret::{self, Env, Secret};

/// Collects problems while converting the values of `doc`, each read by its
/// key path.
pub(super) struct Check<'e> {
    problems: Vec<Problem>,
    env: &'e dyn Env,
    doc: &'e Doc,
    /// Every address resolved in this load, by its text: each is looked up once.
    resolved: HashMap<String, Result<SocketAddr, String>>,
}

impl<'e> Check<'e> {
    pub(super) fn new(env: &'e dyn Env, doc: &'e Doc) -> Self {
        Check {
            problems: Vec::new(),
            env,
            doc,
            resolved: HashMap::new(),
        }
    }

    /// Where `env:` secrets are read.
    pub(super) fn env(&self) -> &'e dyn Env {
        self.env
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
        self.problems.push(Problem {
            key: key.into(),
            message,
        });
    }

    /// One of a fixed set of words (`"forward"`, `"deny"`, ...).
    pub(super) fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)], default: T) -> T {
        let Some(v) = self.doc.str(key) else {
            return default;
        };
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

    /// A count that must be at least 1; a 0 is reported and read as 1.
    pub(super) fn at_least_one(&mut self, key: &str) -> Option<u64> {
        match self.doc.count(key) {
            Some(0) => {
                self.problem(key, "must be at least 1");
                Some(1)
            }
            other => other,
        }
    }

    /// A size such as "64KiB" or "1MiB", greater than zero and at most
    /// [`MAX_MAX_BODY`] (bodies are held in memory).
    pub(super) fn size(&mut self, key: &str, default: u64) -> u64 {
        let Some(v) = self.doc.str(key) else {
            return default;
        };
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

    pub(super) fn duration(&mut self, key: &str, default: Duration) -> Duration {
        let Some(v) = self.doc.str(key) else {
            return default;
        };
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

    pub(super) fn header_name(&mut self, key: &str, default: &str) -> HeaderName {
        let v = self.doc.str(key).unwrap_or(default);
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

    /// A secret spec (`env:NAME`, `file:/path` or a literal) read now.
    pub(super) fn secret(
        &mut self,
        key: impl Into<String>,
        spec: &str,
        base: &Path,
    ) -> Option<Secret> {
        secret::resolve_secret(spec, base, self.env)
            .map_err(|msg| self.problem_with(key, msg))
            .ok()
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

/// A header name compared the way frameworks do: lower-case, `_` as `-`.
pub fn canonical_header(name: &HeaderName) -> HeaderName {
    let s = name.as_str().replace('_', "-");
    HeaderName::from_bytes(s.as_bytes()).unwrap_or_else(|_| name.clone())
}
