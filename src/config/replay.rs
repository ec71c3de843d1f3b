//! `[replay]`: the store of seen deliveries (memory or Redis), how long an id
//! is remembered, and what a route does when Redis cannot answer.

use std::time::Duration;

use super::check::Check;
use super::{OnStoreError, RedisSettings, Replay, StoreKind};

/// `redis_timeout` unless set (the schema shows it, with `store = "redis"` only).
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// `key_prefix` unless set.
pub const DEFAULT_KEY_PREFIX: &str = "persona-guard:";

/// The store and its capacity (fixed at start), and the rest of `[replay]`.
pub(super) fn compile(c: &mut Check) -> (StoreKind, u64, Replay) {
    let d = c.doc();
    let store = match c.choice("replay.store", [false, true]) {
        false => {
            // A misspelt store is reported alone.
            let memory = d.str("replay.store").is_none_or(|w| w == "memory");
            for key in REDIS_ONLY.into_iter().filter(|k| memory && d.has(k)) {
                c.problem(key, "only applies to store = \"redis\"");
            }
            StoreKind::Memory
        }
        true => StoreKind::Redis(redis(c)),
    };
    let on_store_error = c.choice(
        "replay.on_store_error",
        [OnStoreError::Reject, OnStoreError::Allow],
    );
    let ttl = c.duration("replay.ttl");
    let capacity = c.count("replay.capacity").unwrap_or_default();
    let inflight_ttl = c.duration("replay.inflight_ttl");
    let replay = Replay {
        on_store_error,
        ttl,
        inflight_ttl,
    };
    (store, capacity, replay)
}

/// The keys only the Redis store takes.
const REDIS_ONLY: [&str; 5] = [
    "replay.redis_url",
    "replay.redis_password",
    "replay.redis_timeout",
    "replay.key_prefix",
    "replay.on_store_error",
];

fn redis(c: &mut Check) -> RedisSettings {
    let d = c.doc();
    let url = redis_url(c, d.str("replay.redis_url"));
    let password = d
        .str("replay.redis_password")
        .and_then(|spec| c.secret("replay.redis_password", spec));
    let timeout = c.read("replay.redis_timeout", super::check::parse_duration);
    let key_prefix = d.str("replay.key_prefix").unwrap_or(DEFAULT_KEY_PREFIX);
    RedisSettings {
        url,
        password,
        key_prefix: key_prefix.to_string(),
        timeout: timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT),
    }
}

/// The URL, parsed by the Redis client to be sure; never in a message (it may
/// hold a password).
fn redis_url(c: &mut Check, value: Option<&str>) -> String {
    let key = "replay.redis_url";
    match value {
        None => c.problem(
            key,
            "is required with store = \"redis\", e.g. \"redis://127.0.0.1:6379/0\"",
        ),
        Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => c.problem(
            key,
            "must start with redis:// or rediss:// (the URL is not repeated here: it may hold a password)",
        ),
        Some(u) if redis::Client::open(u).is_err() => c.problem(
            key,
            "is not a valid Redis URL (the URL is not repeated here: it may hold a password)",
        ),
        Some(u) => return u.to_string(),
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::from_str;
    use super::super::tests::{env, keys};
    use super::*;

    #[test]
    fn redis_store_settings_are_validated_and_the_url_never_echoed() {
        let text = r#"
[replay]
store = "redis"
redis_url = "redis://:hunter2@127.0.0.1:6379/0"
redis_password = "env:SECRET"
on_store_error = "allow"
redis_timeout = "250ms"
[[route]]
path = "/a"
secrets = ["x"]
"#;
        let c = from_str(text, &env()).unwrap();
        assert_eq!(c.policy.replay.on_store_error, OnStoreError::Allow);
        let StoreKind::Redis(r) = &c.process.store else {
            panic!("redis expected")
        };
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert_eq!(r.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(r.password.as_ref().unwrap().expose(), b"wbhsec_abc");
        assert!(!format!("{c:?}").contains("hunter2"));

        let bad = text
            .replace("redis://:hunter2@", "http://:hunter2@")
            .replace("allow", "sometimes");
        let problems = from_str(&bad, &env()).unwrap_err();
        assert_eq!(
            keys(&problems),
            vec!["replay.redis_url", "replay.on_store_error"]
        );
        assert!(problems.iter().all(|p| !p.message.contains("hunter2")));

        let memory_with_redis_keys =
            "[replay]\nredis_url = \"redis://x\"\n[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";
        let problems = from_str(memory_with_redis_keys, &env()).unwrap_err();
        assert_eq!(keys(&problems), vec!["replay.redis_url"]);
    }

    #[test]
    fn capacity_and_store_words_are_checked() {
        let text = "[replay]\nstore = \"disk\"\ncapacity = 0\n[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";
        let p = from_str(text, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["replay.store", "replay.capacity"]);
        assert!(!p[0].message.contains("disk"), "{p:?}");
    }
}
