//! `[spool]`: where verified deliveries the app could not take are kept (see
//! [`crate::spool`]), how much and for how long, the key that seals them, and
//! the rules relating it to `[replay]` and the routes' `spool`.

use std::path::PathBuf;
use std::time::Duration;

use super::check::{Check, at_least_a_second, parse_size};
use super::secret::Source;
use super::{Config, OnStoreError, Problem, ProcessConfig, Route, StoreKind};

/// A route's `spool` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpoolMode {
    /// `"off"` (the default): the app's answer is Persona's answer.
    #[default]
    Off,
    /// `"on_failure"`: forwarded first; kept when the app cannot take it
    /// (connection failure, `read_timeout`, 5xx, 408, 429).
    OnFailure,
    /// `"always"`: kept first, answered 202 at once, delivered from the spool.
    Always,
}

/// `[spool] key`: the 32-byte AES-256-GCM key that seals spooled records at
/// rest. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpoolKey(pub [u8; 32]);

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(<redacted>)")
    }
}

/// `[spool]` as the process opens it (see [`crate::spool`]). `Debug` never
/// shows the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The embedded spool's directory (relative paths taken from the file's
    /// directory); `None` with the Redis store or when no route spools.
    pub dir: Option<PathBuf>,
    /// Bytes the spool may hold, all entries together.
    pub max_bytes: u64,
    /// Seals entries at rest (AES-256-GCM) when set.
    pub key: Option<SpoolKey>,
}

/// `[spool]` as a reload applies it: how redelivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// A live entry older than this becomes a dead letter.
    pub max_age: Duration,
    /// The longest wait between two redeliveries of an entry.
    pub max_backoff: Duration,
}

pub(super) fn compile(c: &mut Check) -> (SpoolSettings, Redelivery) {
    let dir = c.path("spool.dir");
    // `check` creates nothing: a missing directory is made at start.
    if dir
        .as_ref()
        .is_some_and(|p| p.metadata().is_ok_and(|m| !m.is_dir()))
    {
        c.problem(
            "spool.dir",
            "exists but is not a directory (the path is not repeated here)",
        );
    }
    let max_bytes = c.read("spool.max_bytes", |v| match parse_size(v)? {
        b if b < 1024 => Err("must be at least 1KiB"),
        b => Ok(b),
    });
    let max_age = c.read("spool.max_age", at_least_a_second);
    let max_backoff = c.read("spool.max_backoff", at_least_a_second);
    let spool = SpoolSettings {
        dir,
        max_bytes: max_bytes.unwrap_or_default(),
        key: key(c),
    };
    let redelivery = Redelivery {
        max_age: max_age.unwrap_or_default(),
        max_backoff: max_backoff.unwrap_or_default(),
    };
    (spool, redelivery)
}

const KEY_FORMS: &str = "must be `env:NAME` or `file:/path` holding 32 bytes: 64 hex characters or standard base64 of 32 bytes (a file may also hold the 32 raw bytes); the value is not repeated here";

/// `spool.key`: a secret source (never a literal: a key is not written in the
/// file) whose value decodes to exactly 32 bytes. No message repeats it.
fn key(c: &mut Check) -> Option<SpoolKey> {
    let spec = c.reference("spool.key", KEY_FORMS)?;
    let decoded = match c.source("spool.key", spec)? {
        Source::File(b) if b.len() == 32 => b.try_into().ok(),
        Source::File(b) | Source::Env(b) | Source::Literal(b) => decode_text(b.trim_ascii()),
    };
    if decoded.is_none() {
        c.problem("spool.key", KEY_FORMS);
    }
    decoded.map(SpoolKey)
}

/// 64 hex characters or standard base64 (padded) of 32 bytes.
fn decode_text(text: &[u8]) -> Option<[u8; 32]> {
    let bytes = match text.len() {
        64 => hex::decode(text).ok()?,
        44 => base64_standard(text)?,
        _ => return None,
    };
    bytes.try_into().ok()
}

/// Standard base64 (RFC 4648 §4, `+` and `/`, padded to a multiple of 4).
fn base64_standard(text: &[u8]) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    let pad = text.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &text[..text.len() - pad];
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (j, &b) in chunk.iter().enumerate() {
            n |= sextet(b)? << (18 - 6 * j);
        }
        let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let take = chunk.len() - 1;
        // The bits after the last byte must be zero (canonical encoding).
        if take < 3 && full[take..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&full[..take]);
    }
    Some(out)
}

/// A spooling route with the memory store needs `spool.dir`: entries must
/// survive a restart, and the memory store keeps nothing across one.
pub(super) fn check(c: &mut Check, p: &ProcessConfig, routes: &[Route]) {
    if p.spool.dir.is_none()
        && matches!(p.store, StoreKind::Memory)
        && routes.iter().any(|r| r.spool != SpoolMode::Off)
    {
        c.problem(
            "spool.dir",
            "required when a route spools and replay.store = \"memory\"; the spool must survive a restart",
        );
    }
}

/// Valid but probably not meant: `spool.dir` with the Redis store (the shared
/// spool lives in Redis), spooling routes with `on_store_error = "allow"`.
pub(super) fn warnings(cfg: &Config) -> Vec<Problem> {
    let (p, policy) = (&cfg.process, &cfg.policy);
    let mut w = Vec::new();
    if p.spool.dir.is_some() && matches!(p.store, StoreKind::Redis(_)) {
        w.push(Problem::new(
            "spool.dir",
            "is unused with replay.store = \"redis\": the shared spool lives in Redis; remove it",
        ));
    }
    if policy.replay.on_store_error == OnStoreError::Allow {
        for (i, r) in policy.routes.iter().enumerate() {
            if r.spool != SpoolMode::Off {
                w.push(Problem::new(
                    format!("route[{i}].spool"),
                    "with replay.on_store_error = \"allow\", a delivery forwarded without a replay claim (Redis unavailable) cannot be spooled; it is answered as without a spool",
                ));
            }
        }
    }
    w
}

#[cfg(test)]
mod tests;
