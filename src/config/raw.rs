//! The file as written: one `Raw*` struct per table, every field optional,
//! unknown keys refused. Deserialised through `safe_de`, so no error repeats the
//! text; nothing here checks a value (that is the section files' job).

use serde::Deserialize;

use super::error::{self, Problem};
use super::safe_de;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub unmatched: Option<String>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub replay: RawReplay,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub spool: RawSpool,
    #[serde(default)]
    pub tracing: RawTracing,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub address: Option<String>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub address: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub threads: Option<usize>,
    pub grace_period: Option<String>,
    pub body_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub max_buffered: Option<String>,
    pub max_buffered_per_client: Option<String>,
    pub min_body_rate: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub address: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca_file: Option<String>,
    pub host_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplay {
    pub store: Option<String>,
    pub ttl: Option<String>,
    pub capacity: Option<u64>,
    pub redis_url: Option<String>,
    pub redis_password: Option<String>,
    pub redis_timeout: Option<String>,
    pub key_prefix: Option<String>,
    pub on_store_error: Option<String>,
    pub inflight_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub event_created_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub path: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub tolerance: Option<String>,
    pub max_body: Option<String>,
    pub events: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub allow_from: Option<Vec<String>>,
    pub kind: Option<String>,
    pub id_pointer: Option<String>,
    pub spool: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    pub dir: Option<String>,
    pub max_bytes: Option<String>,
    pub max_age: Option<String>,
    pub max_backoff: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub sampling_ratio: Option<f64>,
    pub service_name: Option<String>,
}

/// Parses the TOML text into the raw structs; errors never quote the text (see
/// `safe_de` and `error::from_toml`).
pub(super) fn parse(text: &str) -> Result<RawConfig, Problem> {
    let ctx = safe_de::Ctx::default();
    let de = safe_de::Wrap::new(toml::Deserializer::new(text), &ctx);
    RawConfig::deserialize(de).map_err(|e| error::from_toml(text, &ctx, &e))
}

/// The raw structs from a parsed table (the file with the environment laid
/// over it); errors name the key path only.
pub(super) fn from_table(table: toml::Table) -> Result<RawConfig, Problem> {
    let ctx = safe_de::Ctx::default();
    let de = safe_de::Wrap::new(toml::Value::Table(table), &ctx);
    RawConfig::deserialize(de).map_err(|e| error::from_toml("", &ctx, &e))
}
