//! The settings fixed for the life of the process: [`ProcessConfig`], the
//! compiled values of the schema's restart-only keys ([`Key::restart`]). A
//! SIGHUP reload names each one a new file changes ([`ProcessConfig::diff`])
//! and keeps the running values ([`ProcessConfig::keep`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::schema::{KEYS, Key};
use super::{Config, ListenCert, ListenTls, LogFormat, SpoolSettings, StoreKind, TracingSettings};

/// What a reload cannot change: the process keeps the values it started with.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub log_format: LogFormat,
    pub listen: SocketAddr,
    /// TLS on the public listener (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen_tls: Option<ListenTls>,
    /// The key pair of `listen_tls`, loaded and matched at validation.
    pub listen_cert: Option<ListenCert>,
    pub admin: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    /// How long an idle client connection is kept open.
    pub idle_timeout: Duration,
    /// CA bundle (PEM) trusted for upstream TLS instead of the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// The replay store: its kind is fixed, its Redis settings reload.
    pub store: StoreKind,
    /// Ids the memory store holds.
    pub capacity: u64,
    pub spool: SpoolSettings,
    /// `[tracing]`: OpenTelemetry export.
    pub tracing: TracingSettings,
}

/// A key whose new value a reload cannot apply: the running value stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly {
    /// The key as the file spells it (`listen.address`), or its table (`listen.tls`).
    pub key: String,
    /// What happens instead, for the operator.
    pub note: &'static str,
}

impl RestartOnly {
    /// Every restart-only key of the schema, in its order.
    pub fn all() -> Vec<RestartOnly> {
        KEYS.iter()
            .filter_map(|k: &Key| {
                let r = k.restart?;
                let key = if r.table { k.table.into() } else { k.path() };
                Some(RestartOnly { key, note: r.note })
            })
            .collect()
    }
}

impl ProcessConfig {
    /// Each setting `new` changes from `old` that a reload cannot apply, in
    /// the schema's order. Empty when a reload applies all of `new`.
    pub fn diff(old: &ProcessConfig, new: &ProcessConfig) -> Vec<RestartOnly> {
        let (a, b) = (old, new);
        let (s, t) = (&a.tracing, &b.tracing);
        // One entry per restart-only key, in the schema's order.
        let changed = [
            a.log_format != b.log_format,
            a.listen != b.listen,
            a.listen_tls.is_some() != b.listen_tls.is_some(),
            a.admin != b.admin,
            a.threads != b.threads,
            a.grace_period != b.grace_period,
            a.idle_timeout != b.idle_timeout,
            a.upstream_ca_file != b.upstream_ca_file,
            a.store.name() != b.store.name(),
            a.capacity != b.capacity,
            a.spool.dir != b.spool.dir,
            a.spool.max_bytes != b.spool.max_bytes,
            a.spool.key != b.spool.key,
            s.otlp_endpoint != t.otlp_endpoint,
            s.sampling_ratio != t.sampling_ratio,
            s.service_name != t.service_name,
        ];
        let all = RestartOnly::all();
        debug_assert_eq!(all.len(), changed.len());
        all.into_iter()
            .zip(changed)
            .filter_map(|(r, changed)| changed.then_some(r))
            .collect()
    }

    /// `new` with `running`'s process settings, for a reload; but for two
    /// read again: `idle_timeout` (HTTP/1 connections use the new one) and
    /// the Redis settings of an unchanged store kind.
    pub fn keep(mut new: Config, running: &Config) -> Config {
        let mut kept = running.process.clone();
        kept.idle_timeout = new.process.idle_timeout;
        if kept.store.name() == new.process.store.name() {
            kept.store = new.process.store;
        }
        new.process = kept;
        new
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
        from_str(text, &env()).unwrap().process
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
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "a");
        let mut changed = BASE.to_string();
        for (old, new) in [
            ("\"text\"", "\"json\""),
            (
                "127.0.0.1:18080\"",
                "127.0.0.1:18081\"\ntls = { cert = \"C\", key = \"K\" }",
            ),
            ("127.0.0.1:19090", "127.0.0.1:19091"),
            ("threads = 2", "threads = 3"),
            ("grace_period = \"10s\"", "grace_period = \"20s\""),
            ("idle_timeout = \"60s\"", "idle_timeout = \"30s\""),
            ("127.0.0.1:13000\"", "127.0.0.1:13000\"\nca_file = \"C\""),
            ("store = \"memory\"", REDIS),
            ("capacity = 1000", "capacity = 2000"),
            ("\"spool-a\"", "\"spool-b\""),
            ("max_bytes = \"1MiB\"", "max_bytes = \"2MiB\""),
            ("env:SPOOL_KEY", "env:SPOOL_KEY_OTHER"),
            ("4318/v1/traces", "4319/v1/traces"),
            ("sampling_ratio = 0.5", "sampling_ratio = 0.25"),
            ("\"guard-a\"", "\"guard-b\""),
        ] {
            changed = changed.replacen(old, new, 1);
        }
        let changed = changed
            .replace("\"C\"", &format!("\"{}\"", cert.display()))
            .replace("\"K\"", &format!("\"{}\"", key.display()));
        let all = ProcessConfig::diff(&process(BASE), &process(&changed));
        assert_eq!(all, RestartOnly::all());
        assert_eq!(all.len(), 16);
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
        let cases: &[(&str, &str, &str)] = &[
            ("127.0.0.1:18080", "127.0.0.1:18081", "listen.address"),
            ("address = \"127.0.0.1:18080\"", &tls, "listen.tls"),
            ("127.0.0.1:19090", "127.0.0.1:19091", "admin.address"),
            ("threads = 2", "threads = 3", "server.threads"),
            ("store = \"memory\"", REDIS, "replay.store"),
            ("capacity = 1000", "capacity = 2000", "replay.capacity"),
            ("\"text\"", "\"json\"", "log_format"),
            (
                "grace_period = \"10s\"",
                "grace_period = \"20s\"",
                "server.grace_period",
            ),
            ("address = \"127.0.0.1:13000\"", &ca, "upstream.ca_file"),
            (
                "idle_timeout = \"60s\"",
                "idle_timeout = \"30s\"",
                "server.idle_timeout",
            ),
            ("\"spool-a\"", "\"spool-b\"", "spool.dir"),
            ("env:SPOOL_KEY", "env:SPOOL_KEY_OTHER", "spool.key"),
            ("key = \"env:SPOOL_KEY\"", "", "spool.key"),
            (
                "max_bytes = \"1MiB\"",
                "max_bytes = \"2MiB\"",
                "spool.max_bytes",
            ),
            ("4318/v1/traces", "4319/v1/traces", "tracing.otlp_endpoint"),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"",
                "",
                "tracing.otlp_endpoint",
            ),
            (
                "sampling_ratio = 0.5",
                "sampling_ratio = 0.25",
                "tracing.sampling_ratio",
            ),
            ("\"guard-a\"", "\"guard-b\"", "tracing.service_name"),
        ];
        for (old, new, entry) in cases {
            let named: Vec<String> = diff_after(BASE, old, new)
                .into_iter()
                .map(|r| r.key)
                .collect();
            assert_eq!(named, [*entry], "{entry}");
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
