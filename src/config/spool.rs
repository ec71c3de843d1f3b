//! `[spool]`: where verified deliveries the app could not take are kept (see
//! [`crate::spool`]), how much and for how long, the key that seals them, and
//! the rules relating it to `[replay]` and the routes' `spool`.

use std::path::Path;
use std::time::Duration;

use super::check::Check;
use super::defaults::{
    DEFAULT_SPOOL_MAX_AGE, DEFAULT_SPOOL_MAX_BACKOFF, DEFAULT_SPOOL_MAX_BYTES, MIN_SPOOL_DURATION,
    MIN_SPOOL_MAX_BYTES,
};
use super::raw::RawSpool;
use super::secret::{self, Source};
use super::{OnStoreError, Problem, Replay, Route, SpoolSettings, StoreKind};
use crate::spool::Mode;
use crate::spool::codec::Key;

pub(super) fn compile(c: &mut Check, raw: &RawSpool, base: &Path) -> SpoolSettings {
    let dir = raw.dir.as_deref().map(|d| {
        let path = base.join(d);
        // `check` creates nothing: a missing directory is made at start.
        if path.metadata().is_ok_and(|m| !m.is_dir()) {
            c.problem(
                "spool.dir",
                "exists but is not a directory (the path is not repeated here)",
            );
        }
        path
    });
    let max_bytes = max_bytes(c, raw.max_bytes.as_deref());
    let max_age = at_least_a_second(
        c,
        "spool.max_age",
        raw.max_age.as_deref(),
        DEFAULT_SPOOL_MAX_AGE,
    );
    let max_backoff = at_least_a_second(
        c,
        "spool.max_backoff",
        raw.max_backoff.as_deref(),
        DEFAULT_SPOOL_MAX_BACKOFF,
    );
    let key = raw.key.as_deref().and_then(|spec| key(c, spec, base));
    SpoolSettings {
        dir,
        max_bytes,
        max_age,
        max_backoff,
        key,
    }
}

/// The route's `spool` word.
pub(super) fn mode(c: &mut Check, key: &str, value: Option<&str>) -> Mode {
    c.choice(
        key,
        value,
        &[
            ("off", Mode::Off),
            ("on_failure", Mode::OnFailure),
            ("always", Mode::Always),
        ],
        Mode::Off,
    )
}

/// A size of at least [`MIN_SPOOL_MAX_BYTES`] (no upper bound: the spool is on disk).
fn max_bytes(c: &mut Check, value: Option<&str>) -> u64 {
    let Some(v) = value else {
        return DEFAULT_SPOOL_MAX_BYTES;
    };
    match v.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() >= MIN_SPOOL_MAX_BYTES => b.as_u64(),
        Ok(_) => {
            c.problem("spool.max_bytes", "must be at least 1KiB");
            DEFAULT_SPOOL_MAX_BYTES
        }
        // Not `e`: bytesize's message quotes the input.
        Err(_) => {
            c.problem(
                "spool.max_bytes",
                "is not a size (the value is not repeated here); write e.g. \"256MiB\", \"2GiB\"",
            );
            DEFAULT_SPOOL_MAX_BYTES
        }
    }
}

fn at_least_a_second(c: &mut Check, key: &str, value: Option<&str>, default: Duration) -> Duration {
    let d = c.duration(key, value, default);
    if d < MIN_SPOOL_DURATION {
        c.problem_with(
            key,
            format!(
                "{} is less than the minimum of 1s",
                humantime::format_duration(d)
            ),
        );
        return default;
    }
    d
}

const KEY_FORMS: &str = "must be `env:NAME` or `file:/path` holding 32 bytes: 64 hex characters or standard base64 of 32 bytes (a file may also hold the 32 raw bytes); the value is not repeated here";

/// `spool.key`: a secret source (never a literal: a key is not written in the
/// file) whose value decodes to exactly 32 bytes. No message repeats it.
fn key(c: &mut Check, spec: &str, base: &Path) -> Option<Key> {
    let decoded = match secret::read_source(spec, base, c.env()) {
        Err(msg) => {
            c.problem_with("spool.key", msg);
            return None;
        }
        Ok(Source::Literal(_)) => None,
        Ok(Source::File(b)) if b.len() == 32 => b.try_into().ok(),
        Ok(Source::File(b) | Source::Env(b)) => decode_text(b.trim_ascii()),
    };
    if decoded.is_none() {
        c.problem("spool.key", KEY_FORMS);
    }
    decoded.map(Key)
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
pub(super) fn check(c: &mut Check, spool: &SpoolSettings, replay: &Replay, routes: &[Route]) {
    if spool.dir.is_none()
        && matches!(replay.store, StoreKind::Memory)
        && routes.iter().any(|r| r.spool != Mode::Off)
    {
        c.problem(
            "spool.dir",
            "required when a route spools and replay.store = \"memory\"; the spool must survive a restart",
        );
    }
}

/// Valid but probably not meant: `spool.dir` with the Redis store (the shared
/// spool lives in Redis), spooling routes with `on_store_error = "allow"`.
pub(super) fn warnings(spool: &SpoolSettings, replay: &Replay, routes: &[Route]) -> Vec<Problem> {
    let mut w = Vec::new();
    if spool.dir.is_some() && matches!(replay.store, StoreKind::Redis(_)) {
        w.push(Problem {
            key: "spool.dir".into(),
            message: "is unused with replay.store = \"redis\": the shared spool lives in Redis; remove it".into(),
        });
    }
    if replay.on_store_error == OnStoreError::Allow {
        for (i, _) in routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.spool != Mode::Off)
        {
            w.push(Problem {
                key: format!("route[{i}].spool"),
                message: "with replay.on_store_error = \"allow\", a delivery forwarded without a replay claim (Redis unavailable) cannot be spooled; it is answered as without a spool".into(),
            });
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{SPOOL_KEY_BYTES, env, keys};
    use super::super::{
        DEFAULT_SPOOL_MAX_AGE, DEFAULT_SPOOL_MAX_BACKOFF, DEFAULT_SPOOL_MAX_BYTES, from_str,
    };
    use super::*;

    const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"env:SECRET\"]\n";

    fn with_spool(spool: &str, route_extra: &str) -> String {
        format!("[spool]\n{spool}\n{ROUTE}{route_extra}\n")
    }

    #[test]
    fn defaults_spool_nothing() {
        let c = from_str(ROUTE, &env()).unwrap();
        assert_eq!(
            c.spool,
            SpoolSettings {
                dir: None,
                max_bytes: 256 * 1024 * 1024,
                max_age: Duration::from_secs(7 * 24 * 3600),
                max_backoff: Duration::from_secs(60),
                key: None,
            }
        );
        assert_eq!(c.spool.max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(c.spool.max_age, DEFAULT_SPOOL_MAX_AGE);
        assert_eq!(c.spool.max_backoff, DEFAULT_SPOOL_MAX_BACKOFF);
        assert_eq!(c.routes[0].spool, Mode::Off);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn settings_are_parsed() {
        let text = with_spool(
            "dir = \"spool\"\nmax_bytes = \"2GiB\"\nmax_age = \"2d\"\nmax_backoff = \"5m\"",
            "spool = \"always\"",
        );
        let c = from_str(&text, &env()).unwrap();
        assert_eq!(c.spool.dir.as_deref(), Some(Path::new("./spool")));
        assert_eq!(c.spool.max_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(c.spool.max_age, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(c.spool.max_backoff, Duration::from_secs(300));
        assert_eq!(c.routes[0].spool, Mode::Always);
    }

    #[test]
    fn route_spool_words() {
        for (word, mode) in [
            ("off", Mode::Off),
            ("on_failure", Mode::OnFailure),
            ("always", Mode::Always),
        ] {
            let text = with_spool("dir = \"spool\"", &format!("spool = \"{word}\""));
            assert_eq!(from_str(&text, &env()).unwrap().routes[0].spool, mode);
        }
        let text =
            format!("{ROUTE}[[route]]\npath = \"/b\"\nsecrets = [\"x\"]\nspool = \"sometimes\"\n");
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["route[1].spool"]);
        assert!(p[0].message.contains("\"on_failure\""), "{p:?}");
        assert!(!p[0].message.contains("sometimes"), "{p:?}");
    }

    #[test]
    fn a_spooling_route_with_the_memory_store_needs_a_dir() {
        for mode in ["on_failure", "always"] {
            let text = format!("{ROUTE}spool = \"{mode}\"\n");
            let p = from_str(&text, &env()).unwrap_err();
            assert_eq!(keys(&p), vec!["spool.dir"]);
            assert!(p[0].message.contains("survive a restart"), "{p:?}");
        }
        // The Redis store holds the shared spool: no dir needed.
        let redis = format!(
            "[replay]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n{ROUTE}spool = \"always\"\n"
        );
        let c = from_str(&redis, &env()).unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn limits_are_checked_each_under_its_key() {
        let text = with_spool(
            "max_bytes = \"1023B\"\nmax_age = \"500ms\"\nmax_backoff = \"999ms\"",
            "",
        );
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(
            keys(&p),
            vec!["spool.max_bytes", "spool.max_age", "spool.max_backoff"]
        );
        let text = with_spool(
            "max_bytes = \"lots\"\nmax_age = \"0s\"\nmax_backoff = \"soon\"",
            "",
        );
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(
            keys(&p),
            vec!["spool.max_bytes", "spool.max_age", "spool.max_backoff"]
        );
        assert!(!format!("{p:?}").contains("lots") && !format!("{p:?}").contains("soon"));
        // The boundaries are accepted.
        let edge = with_spool(
            "max_bytes = \"1KiB\"\nmax_age = \"1s\"\nmax_backoff = \"1s\"",
            "",
        );
        let c = from_str(&edge, &env()).unwrap();
        assert_eq!(c.spool.max_bytes, 1024);
        assert_eq!(c.spool.max_age, Duration::from_secs(1));
    }

    #[test]
    fn dir_that_is_a_file_is_an_error_and_check_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let text = with_spool(&format!("dir = \"{}\"", file.display()), "");
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["spool.dir"]);
        assert!(!p[0].message.contains("file"), "{p:?}");

        let missing = tmp.path().join("not-yet");
        let text = with_spool(
            &format!("dir = \"{}\"", missing.display()),
            "spool = \"always\"",
        );
        let c = from_str(&text, &env()).unwrap();
        assert_eq!(c.spool.dir.as_deref(), Some(missing.as_path()));
        assert!(!missing.exists());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let p = from_str(&with_spool("directory = \"x\"", ""), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["spool"]);
        assert!(p[0].message.contains("max_backoff"), "{p:?}");
    }

    #[test]
    fn key_from_env_hex_env_base64_and_a_raw_file() {
        for var in ["SPOOL_KEY", "SPOOL_KEY_B64"] {
            let text = with_spool(&format!("key = \"env:{var}\""), "");
            let c = from_str(&text, &env()).unwrap();
            assert_eq!(c.spool.key, Some(Key(SPOOL_KEY_BYTES)), "{var}");
            assert!(!format!("{c:?}").contains("0a0b0c"), "{var}");
        }
        let tmp = tempfile::tempdir().unwrap();
        // Raw bytes, one of them a newline: kept as they are.
        let mut raw = SPOOL_KEY_BYTES;
        raw[31] = b'\n';
        let path = tmp.path().join("raw.key");
        std::fs::write(&path, raw).unwrap();
        let text = with_spool(&format!("key = \"file:{}\"", path.display()), "");
        assert_eq!(from_str(&text, &env()).unwrap().spool.key, Some(Key(raw)));
        // Hex and base64 in a file, with a trailing newline.
        for (name, content) in [
            ("hex.key", format!("{}\n", hex::encode(SPOOL_KEY_BYTES))),
            (
                "b64.key",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n".into(),
            ),
        ] {
            let path = tmp.path().join(name);
            std::fs::write(&path, content).unwrap();
            let text = with_spool(&format!("key = \"file:{}\"", path.display()), "");
            let c = from_str(&text, &env()).unwrap();
            assert_eq!(c.spool.key, Some(Key(SPOOL_KEY_BYTES)), "{name}");
        }
    }

    #[test]
    fn a_wrong_key_is_an_error_that_never_quotes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("short.key");
        std::fs::write(&path, "0123456789abcdef_LEAKCANARY\n").unwrap();
        let file = format!("file:{}", path.display());
        for (spec, canary) in [
            ("env:SPOOL_KEY_SHORT", "c2hvcnRrZXlfTEVBS0NBTkFSWQ"),
            (file.as_str(), "LEAKCANARY"),
            // A literal: a key is never written in the file.
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "0a0b0c",
            ),
            // 44 characters that are not base64, 64 that are not hex.
            ("env:SECRET_44", "LEAKCANARY"),
            ("env:SECRET_64", "LEAKCANARY"),
        ] {
            let text = with_spool(&format!("key = \"{spec}\""), "");
            let p = from_str(&text, &env()).unwrap_err();
            assert_eq!(keys(&p), vec!["spool.key"], "{spec}");
            let out = format!("{p:?}");
            assert!(!out.contains(canary), "{spec}: {out}");
            assert!(
                !out.contains("LEAKCANARY") && !out.contains("shortkey"),
                "{out}"
            );
        }
        let p = from_str(&with_spool("key = \"env:SPOOL_KEY_UNSET\"", ""), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["spool.key"]);
        assert!(p[0].message.contains("not set"), "{p:?}");
    }

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64_standard(b"AAECAw=="), Some(vec![0, 1, 2, 3]));
        assert_eq!(base64_standard(b"AAEC"), Some(vec![0, 1, 2]));
        assert_eq!(base64_standard(b"AAE="), Some(vec![0, 1]));
        for bad in [&b"AAE"[..], b"AAF=", b"AA=A", b"A===", b"AA-_", b""] {
            assert_eq!(base64_standard(bad), None, "{bad:?}");
        }
        assert!(decode_text(&[b'g'; 64]).is_none());
    }

    #[test]
    fn warnings_for_an_unused_dir_and_an_allowed_store_error() {
        let text = format!(
            "[replay]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\non_store_error = \"allow\"\n[spool]\ndir = \"spool\"\n{ROUTE}spool = \"on_failure\"\n[[route]]\npath = \"/b\"\nsecrets = [\"x\"]\n"
        );
        let c = from_str(&text, &env()).unwrap();
        let w = c.warnings();
        assert_eq!(keys(&w), vec!["spool.dir", "route[0].spool"]);
        assert!(w[0].message.contains("Redis"), "{w:?}");
        assert!(w[1].message.contains("on_store_error"), "{w:?}");
    }

    #[test]
    fn keep_running_keeps_the_restart_only_keys() {
        let running = SpoolSettings {
            dir: Some("a".into()),
            max_bytes: 1,
            max_age: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            key: Some(Key([1; 32])),
        };
        let new = SpoolSettings {
            dir: None,
            max_bytes: 2,
            max_age: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            key: None,
        };
        let kept = new.keep_running(&running);
        assert_eq!(kept.dir, running.dir);
        assert_eq!(kept.key, running.key);
        assert_eq!(kept.max_bytes, 1);
        assert_eq!(kept.max_age, Duration::from_secs(2));
        assert_eq!(kept.max_backoff, Duration::from_secs(2));
    }
}
