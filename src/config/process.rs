//! The settings fixed for the life of the process, apart from the policy a
//! SIGHUP reload swaps: [`ProcessConfig`], and [`ProcessConfig::diff`] naming
//! each one a new file changed, which the reload cannot apply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::SpoolKey;
use super::{Config, LogFormat, TracingSettings};

/// What the process set up at start from the file and keeps until it exits:
/// bound listeners, worker threads, the replay store, the log subscriber,
/// pingora's grace period and upstream CA bundle, HTTP/2's idle bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    pub listen: SocketAddr,
    /// TLS on the public listener or not (its files reload; turning it on or
    /// off does not).
    pub listen_tls: bool,
    pub admin: SocketAddr,
    pub threads: usize,
    /// The replay store's kind, `"memory"` or `"redis"` (its Redis settings
    /// reload).
    pub store: &'static str,
    pub capacity: u64,
    pub log_format: LogFormat,
    pub grace_period: Duration,
    pub upstream_ca_file: Option<PathBuf>,
    pub idle_timeout: Duration,
    /// `spool.dir`: the embedded spool's directory, opened at start.
    pub spool_dir: Option<PathBuf>,
    /// `spool.key`: entries already sealed with it stay readable only with it.
    pub spool_key: Option<SpoolKey>,
    /// `spool.max_bytes`: the spool is sized at start.
    pub spool_max_bytes: u64,
    /// `[tracing]`: the exporter and sampler are built at start.
    pub tracing: TracingSettings,
}

/// A key whose new value a reload cannot apply: the running value stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartOnly {
    /// The key as the file spells it (`listen.address`).
    pub key: &'static str,
    /// What happens instead, for the operator.
    pub note: &'static str,
}

impl RestartOnly {
    pub const LISTEN_ADDRESS: RestartOnly = RestartOnly {
        key: "listen.address",
        note: "the bound listener stays until a restart",
    };
    pub const LISTEN_TLS: RestartOnly = RestartOnly {
        key: "listen.tls",
        note: "TLS is turned on or off only on restart (a new cert or key reloads)",
    };
    pub const ADMIN_ADDRESS: RestartOnly = RestartOnly {
        key: "admin.address",
        note: "the bound admin listener stays until a restart",
    };
    pub const THREADS: RestartOnly = RestartOnly {
        key: "server.threads",
        note: "pingora starts its worker threads once",
    };
    pub const STORE: RestartOnly = RestartOnly {
        key: "replay.store",
        note: "the replay store is chosen at start (its Redis settings reload)",
    };
    pub const CAPACITY: RestartOnly = RestartOnly {
        key: "replay.capacity",
        note: "the memory store is sized at start",
    };
    pub const LOG_FORMAT: RestartOnly = RestartOnly {
        key: "log_format",
        note: "the log format is set at start",
    };
    pub const GRACE_PERIOD: RestartOnly = RestartOnly {
        key: "server.grace_period",
        note: "pingora fixes the shutdown grace period at start",
    };
    pub const CA_FILE: RestartOnly = RestartOnly {
        key: "upstream.ca_file",
        note: "the upstream CA bundle is loaded at start",
    };
    pub const IDLE_TIMEOUT: RestartOnly = RestartOnly {
        key: "server.idle_timeout",
        note: "HTTP/2 connections keep the value from start; HTTP/1 uses the new one",
    };

    pub const SPOOL_DIR: RestartOnly = RestartOnly {
        key: "spool.dir",
        note: "the spool directory is opened at start; its entries stay where they are",
    };
    pub const SPOOL_KEY: RestartOnly = RestartOnly {
        key: "spool.key",
        note: "the spool key is loaded at start (entries sealed with it need it to be read)",
    };
    pub const SPOOL_MAX_BYTES: RestartOnly = RestartOnly {
        key: "spool.max_bytes",
        note: "the spool is sized at start",
    };

    pub const TRACING_ENDPOINT: RestartOnly = RestartOnly {
        key: "tracing.otlp_endpoint",
        note: "the span exporter is built at start",
    };
    pub const TRACING_SAMPLING_RATIO: RestartOnly = RestartOnly {
        key: "tracing.sampling_ratio",
        note: "the sampler is built at start",
    };
    pub const TRACING_SERVICE_NAME: RestartOnly = RestartOnly {
        key: "tracing.service_name",
        note: "the service name is set on the exporter at start",
    };

    /// Every entry, in the order [`ProcessConfig::diff`] lists them.
    pub const ALL: [RestartOnly; 16] = [
        RestartOnly::LISTEN_ADDRESS,
        RestartOnly::LISTEN_TLS,
        RestartOnly::ADMIN_ADDRESS,
        RestartOnly::THREADS,
        RestartOnly::STORE,
        RestartOnly::CAPACITY,
        RestartOnly::LOG_FORMAT,
        RestartOnly::GRACE_PERIOD,
        RestartOnly::CA_FILE,
        RestartOnly::IDLE_TIMEOUT,
        RestartOnly::SPOOL_DIR,
        RestartOnly::SPOOL_KEY,
        RestartOnly::SPOOL_MAX_BYTES,
        RestartOnly::TRACING_ENDPOINT,
        RestartOnly::TRACING_SAMPLING_RATIO,
        RestartOnly::TRACING_SERVICE_NAME,
    ];
}

impl ProcessConfig {
    /// The process settings of `cfg`. The server keeps the one from start and
    /// compares each reloaded file's with it ([`ProcessConfig::diff`]).
    pub fn of(cfg: &Config) -> Self {
        ProcessConfig {
            listen: cfg.listen,
            listen_tls: cfg.listen_tls.is_some(),
            admin: cfg.admin,
            threads: cfg.threads,
            store: cfg.replay.store.name(),
            capacity: cfg.replay.capacity,
            log_format: cfg.log_format,
            grace_period: cfg.grace_period,
            upstream_ca_file: cfg.upstream_ca_file.clone(),
            idle_timeout: cfg.idle_timeout,
            spool_dir: cfg.spool.dir.clone(),
            spool_key: cfg.spool.key.clone(),
            spool_max_bytes: cfg.spool.max_bytes,
            tracing: cfg.tracing.clone(),
        }
    }

    /// Each setting `new` changes from `old` that a reload cannot apply, in
    /// the order of the fields. Empty when a reload applies all of `new`.
    pub fn diff(old: &ProcessConfig, new: &ProcessConfig) -> Vec<RestartOnly> {
        [
            (old.listen != new.listen, RestartOnly::LISTEN_ADDRESS),
            (old.listen_tls != new.listen_tls, RestartOnly::LISTEN_TLS),
            (old.admin != new.admin, RestartOnly::ADMIN_ADDRESS),
            (old.threads != new.threads, RestartOnly::THREADS),
            (old.store != new.store, RestartOnly::STORE),
            (old.capacity != new.capacity, RestartOnly::CAPACITY),
            (old.log_format != new.log_format, RestartOnly::LOG_FORMAT),
            (
                old.grace_period != new.grace_period,
                RestartOnly::GRACE_PERIOD,
            ),
            (
                old.upstream_ca_file != new.upstream_ca_file,
                RestartOnly::CA_FILE,
            ),
            (
                old.idle_timeout != new.idle_timeout,
                RestartOnly::IDLE_TIMEOUT,
            ),
            (old.spool_dir != new.spool_dir, RestartOnly::SPOOL_DIR),
            (old.spool_key != new.spool_key, RestartOnly::SPOOL_KEY),
            (
                old.spool_max_bytes != new.spool_max_bytes,
                RestartOnly::SPOOL_MAX_BYTES,
            ),
            (
                old.tracing.otlp_endpoint != new.tracing.otlp_endpoint,
                RestartOnly::TRACING_ENDPOINT,
            ),
            (
                old.tracing.sampling_ratio != new.tracing.sampling_ratio,
                RestartOnly::TRACING_SAMPLING_RATIO,
            ),
            (
                old.tracing.service_name != new.tracing.service_name,
                RestartOnly::TRACING_SERVICE_NAME,
            ),
        ]
        .into_iter()
        .filter_map(|(changed, entry)| changed.then_some(entry))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, write_cert};
    use super::*;

    const BASE: &str = r#"log_format = "text"
[listen]
address = "127.0.0.1:18080"
[admin]
address = "127.0.0.1:19090"
[server]
threads = 2
grace_period = "10s"
idle_timeout = "60s"
header_timeout = "10s"
[upstream]
address = "127.0.0.1:13000"
[replay]
store = "memory"
ttl = "15m"
capacity = 1000
[spool]
dir = "spool-a"
max_bytes = "1MiB"
max_age = "7d"
max_backoff = "60s"
key = "env:SPOOL_KEY"
[tracing]
otlp_endpoint = "http://127.0.0.1:4318/v1/traces"
sampling_ratio = 0.5
service_name = "guard-a"
[[route]]
path = "/a"
secrets = ["env:SECRET"]
spool = "on_failure"
"#;

    const REDIS: &str = "store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"";

    fn process(text: &str) -> ProcessConfig {
        ProcessConfig::of(&from_str(text, &env()).unwrap())
    }

    /// The entries for `BASE` with `old` replaced by `new`.
    fn diff_after(base: &str, old: &str, new: &str) -> Vec<RestartOnly> {
        let changed = base.replacen(old, new, 1);
        assert_ne!(changed, base, "`{old}` not in the base");
        ProcessConfig::diff(&process(base), &process(&changed))
    }

    #[test]
    fn identical_configs_differ_in_nothing() {
        assert_eq!(ProcessConfig::diff(&process(BASE), &process(BASE)), []);
    }

    #[test]
    fn everything_changed_names_every_entry_once_in_order() {
        let old = process(BASE);
        let new = ProcessConfig {
            listen: "127.0.0.1:1".parse().unwrap(),
            listen_tls: true,
            admin: "127.0.0.1:2".parse().unwrap(),
            threads: 9,
            store: "redis",
            capacity: 9,
            log_format: LogFormat::Json,
            grace_period: Duration::from_secs(9),
            upstream_ca_file: Some("ca.pem".into()),
            idle_timeout: Duration::from_secs(9),
            spool_dir: Some("spool".into()),
            spool_key: Some(SpoolKey([9; 32])),
            spool_max_bytes: 9,
            tracing: TracingSettings {
                otlp_endpoint: None,
                sampling_ratio: super::super::SamplingRatio(0.1),
                service_name: "other".into(),
            },
        };
        assert_eq!(ProcessConfig::diff(&old, &new), RestartOnly::ALL);
    }

    #[test]
    fn each_restart_only_key_changed_alone_is_named_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "a");
        let tls = format!(
            "address = \"127.0.0.1:18080\"\ntls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        );
        let ca = format!(
            "address = \"127.0.0.1:13000\"\nca_file = \"{}\"",
            cert.display()
        );
        let cases: &[(&str, &str, RestartOnly)] = &[
            (
                "127.0.0.1:18080",
                "127.0.0.1:18081",
                RestartOnly::LISTEN_ADDRESS,
            ),
            (
                "address = \"127.0.0.1:18080\"",
                &tls,
                RestartOnly::LISTEN_TLS,
            ),
            (
                "127.0.0.1:19090",
                "127.0.0.1:19091",
                RestartOnly::ADMIN_ADDRESS,
            ),
            ("threads = 2", "threads = 3", RestartOnly::THREADS),
            ("store = \"memory\"", REDIS, RestartOnly::STORE),
            ("capacity = 1000", "capacity = 2000", RestartOnly::CAPACITY),
            ("\"text\"", "\"json\"", RestartOnly::LOG_FORMAT),
            (
                "grace_period = \"10s\"",
                "grace_period = \"20s\"",
                RestartOnly::GRACE_PERIOD,
            ),
            ("address = \"127.0.0.1:13000\"", &ca, RestartOnly::CA_FILE),
            (
                "idle_timeout = \"60s\"",
                "idle_timeout = \"30s\"",
                RestartOnly::IDLE_TIMEOUT,
            ),
            ("\"spool-a\"", "\"spool-b\"", RestartOnly::SPOOL_DIR),
            (
                "env:SPOOL_KEY",
                "env:SPOOL_KEY_OTHER",
                RestartOnly::SPOOL_KEY,
            ),
            ("key = \"env:SPOOL_KEY\"", "", RestartOnly::SPOOL_KEY),
            (
                "max_bytes = \"1MiB\"",
                "max_bytes = \"2MiB\"",
                RestartOnly::SPOOL_MAX_BYTES,
            ),
            (
                "4318/v1/traces",
                "4319/v1/traces",
                RestartOnly::TRACING_ENDPOINT,
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"",
                "",
                RestartOnly::TRACING_ENDPOINT,
            ),
            (
                "sampling_ratio = 0.5",
                "sampling_ratio = 0.25",
                RestartOnly::TRACING_SAMPLING_RATIO,
            ),
            (
                "\"guard-a\"",
                "\"guard-b\"",
                RestartOnly::TRACING_SERVICE_NAME,
            ),
        ];
        for (old, new, entry) in cases {
            assert_eq!(diff_after(BASE, old, new), [*entry], "{}", entry.key);
        }
    }

    #[test]
    fn reloadable_changes_are_not_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_cert(dir.path(), "a");
        let (cert_b, key_b) = write_cert(dir.path(), "b");
        let with_tls = BASE.replacen(
            "address = \"127.0.0.1:18080\"",
            &format!(
                "address = \"127.0.0.1:18080\"\ntls = {{ cert = \"{}\", key = \"{}\" }}",
                cert_a.display(),
                key_a.display()
            ),
            1,
        );
        let new_pair = with_tls
            .replace(&cert_a.display().to_string(), &cert_b.display().to_string())
            .replace(&key_a.display().to_string(), &key_b.display().to_string());
        assert_eq!(
            ProcessConfig::diff(&process(&with_tls), &process(&new_pair)),
            []
        );

        for (old, new) in [
            ("path = \"/a\"", "path = \"/b\""),
            ("secrets = [\"env:SECRET\"]", "secrets = [\"another\"]"),
            ("ttl = \"15m\"", "ttl = \"20m\""),
            ("header_timeout = \"10s\"", "header_timeout = \"5s\""),
            ("max_age = \"7d\"", "max_age = \"1d\""),
            ("max_backoff = \"60s\"", "max_backoff = \"5m\""),
            ("spool = \"on_failure\"", "spool = \"always\""),
            ("spool = \"on_failure\"", "spool = \"off\""),
            // The same key, written in base64 instead of hex.
            ("env:SPOOL_KEY", "env:SPOOL_KEY_B64"),
            (
                "address = \"127.0.0.1:13000\"",
                "address = \"127.0.0.1:13001\"",
            ),
        ] {
            assert_eq!(diff_after(BASE, old, new), [], "{old}");
        }

        let redis = BASE.replacen("store = \"memory\"", REDIS, 1);
        let changes: [(&str, &str); 4] = [
            ("6379/0", "6380/1"),
            (REDIS, &format!("{REDIS}\nredis_password = \"pw\"")),
            (REDIS, &format!("{REDIS}\nkey_prefix = \"other:\"")),
            (REDIS, &format!("{REDIS}\nredis_timeout = \"1s\"")),
        ];
        for (old, new) in changes {
            assert_eq!(diff_after(&redis, old, new), [], "{new}");
        }
    }
}
