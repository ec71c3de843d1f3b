use std::time::Duration;

use super::super::tests::{SPOOL_KEY_BYTES, env, keys};
use std::path::Path;

use super::super::{Redelivery, from_str};
use super::*;

const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"env:SECRET\"]\n";

fn with_spool(spool: &str, route_extra: &str) -> String {
    format!("[spool]\n{spool}\n{ROUTE}{route_extra}\n")
}

#[test]
fn defaults_spool_nothing() {
    let c = from_str(ROUTE, &env()).unwrap();
    assert_eq!(
        c.process.spool,
        SpoolSettings {
            dir: None,
            max_bytes: 256 * 1024 * 1024,
            key: None,
        }
    );
    assert_eq!(
        c.policy.spool,
        Redelivery {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_backoff: Duration::from_secs(60),
        }
    );
    assert_eq!(c.policy.routes[0].spool, SpoolMode::Off);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn settings_are_parsed() {
    let text = with_spool(
        "dir = \"spool\"\nmax_bytes = \"2GiB\"\nmax_age = \"2d\"\nmax_backoff = \"5m\"",
        "spool = \"always\"",
    );
    let c = from_str(&text, &env()).unwrap();
    assert_eq!(c.process.spool.dir.as_deref(), Some(Path::new("./spool")));
    assert_eq!(c.process.spool.max_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(c.policy.spool.max_age, Duration::from_secs(2 * 24 * 3600));
    assert_eq!(c.policy.spool.max_backoff, Duration::from_secs(300));
    assert_eq!(c.policy.routes[0].spool, SpoolMode::Always);
}

#[test]
fn route_spool_words() {
    for (word, mode) in [
        ("off", SpoolMode::Off),
        ("on_failure", SpoolMode::OnFailure),
        ("always", SpoolMode::Always),
    ] {
        let text = with_spool("dir = \"spool\"", &format!("spool = \"{word}\""));
        assert_eq!(
            from_str(&text, &env()).unwrap().policy.routes[0].spool,
            mode
        );
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
    assert_eq!(c.process.spool.max_bytes, 1024);
    assert_eq!(c.policy.spool.max_age, Duration::from_secs(1));
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
    assert_eq!(c.process.spool.dir.as_deref(), Some(missing.as_path()));
    assert!(!missing.exists());
}

#[test]
fn unknown_keys_are_refused() {
    let p = from_str(&with_spool("directory = \"x\"", ""), &env()).unwrap_err();
    assert_eq!(keys(&p), vec!["spool"]);
    assert!(p[0].message.contains("did you mean `dir`?"), "{p:?}");
}

#[test]
fn key_from_env_hex_env_base64_and_a_raw_file() {
    for var in ["SPOOL_KEY", "SPOOL_KEY_B64"] {
        let text = with_spool(&format!("key = \"env:{var}\""), "");
        let c = from_str(&text, &env()).unwrap();
        assert_eq!(
            c.process.spool.key,
            Some(SpoolKey(SPOOL_KEY_BYTES)),
            "{var}"
        );
        assert!(!format!("{c:?}").contains("0a0b0c"), "{var}");
    }
    let tmp = tempfile::tempdir().unwrap();
    // Raw bytes, one of them a newline: kept as they are.
    let mut raw = SPOOL_KEY_BYTES;
    raw[31] = b'\n';
    let path = tmp.path().join("raw.key");
    std::fs::write(&path, raw).unwrap();
    let text = with_spool(&format!("key = \"file:{}\"", path.display()), "");
    assert_eq!(
        from_str(&text, &env()).unwrap().process.spool.key,
        Some(SpoolKey(raw))
    );
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
        assert_eq!(
            c.process.spool.key,
            Some(SpoolKey(SPOOL_KEY_BYTES)),
            "{name}"
        );
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
    let running = |spool: &str| {
        let text = format!("[spool]\n{spool}\n[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n");
        from_str(&text, &env()).unwrap()
    };
    let old = running(
        "dir = \"a\"\nmax_bytes = \"1KiB\"\nmax_age = \"1s\"\nmax_backoff = \"1s\"\nkey = \"env:SPOOL_KEY\"",
    );
    let new = running("max_bytes = \"2KiB\"\nmax_age = \"2s\"\nmax_backoff = \"2s\"");
    let kept = crate::config::ProcessConfig::keep(new, &old);
    assert_eq!(kept.process.spool.dir, old.process.spool.dir);
    assert_eq!(kept.process.spool.key, old.process.spool.key);
    assert_eq!(kept.process.spool.max_bytes, 1024);
    assert_eq!(kept.policy.spool.max_age, Duration::from_secs(2));
    assert_eq!(kept.policy.spool.max_backoff, Duration::from_secs(2));
}
