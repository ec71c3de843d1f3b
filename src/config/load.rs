//! Loading: the file (or none), the environment over it, then validation,
//! section by section; the entry points [`load`], [`load_with`] and
//! [`from_str`].

use std::path::{Path, PathBuf};

use super::doc::{self, Doc};
use super::env::Provenance;
use super::{
    Config, ConfigError, Env, EnvSource, LogFormat, PolicyConfig, Problem, ProcessConfig,
    Unmatched, check, cross, env, headers, replay, routes, server, spool, upstream,
};

/// The file name problems are shown under when there is no file.
pub const NO_FILE: &str = "(environment)";

/// A loaded configuration with the record of where each value came from.
#[derive(Debug)]
pub struct Effective {
    pub config: Config,
    /// `check --print`: every key in TOML form, annotated with its origin.
    pub printed: String,
    /// Where each value came from: the file or a `PERSONA_GUARD_*` variable.
    pub provenance: Provenance,
}

impl Effective {
    /// [`Config::warnings`], each under a key a variable set naming the
    /// variable (as problems do), so the operator looks in the right place.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut w = self.config.warnings();
        self.provenance.name_vars(&mut w);
        w
    }
}

/// Reads, parses and validates a route file (or none: the defaults), lays the
/// `PERSONA_GUARD_*` variables over it (see `env`) and resolves every secret.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    load_with(file, &EnvSource).map(|e| e.config)
}

/// [`load`] with the environment given, keeping where each value came from.
pub fn load_with(file: Option<&Path>, env: &dyn Env) -> Result<Effective, ConfigError> {
    let fail = |problems| ConfigError {
        file: file.map_or_else(|| PathBuf::from(NO_FILE), Path::to_path_buf),
        problems,
    };
    let (text, base, source) = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                fail(vec![Problem {
                    key: "(file)".into(),
                    message: format!("cannot read the file: {e}"),
                }])
            })?;
            let base = f.parent().unwrap_or(Path::new(".")).to_path_buf();
            (text, base, format!("file {}", f.display()))
        }
        None => (String::new(), PathBuf::from("."), "no file".to_string()),
    };
    compile(&text, &base, env, &source).map_err(fail)
}

/// Parses TOML text, lays the environment's settings over it and validates it
/// (for tests and callers with text in hand).
pub fn from_str(text: &str, env: &dyn Env) -> Result<Config, Vec<Problem>> {
    compile(text, Path::new("."), env, "text").map(|e| e.config)
}

/// The file's text parsed once (syntax, unknown keys, types), then the
/// environment over it, then validation; problems under a key a variable set
/// name the variable.
pub(super) fn compile(
    text: &str,
    base: &Path,
    env: &dyn Env,
    source: &str,
) -> Result<Effective, Vec<Problem>> {
    let mut doc = doc::parse(text)?;
    let prov = env::overlay(&mut doc, env)?;
    let name_vars = |mut v: Vec<Problem>| {
        prov.name_vars(&mut v);
        v
    };
    let counts = doc.check_counts();
    if !counts.is_empty() {
        return Err(name_vars(counts));
    }
    let config = validate(&doc, base, env).map_err(name_vars)?;
    let printed = env::render(&doc, &prov, source);
    Ok(Effective {
        config,
        printed,
        provenance: prov,
    })
}

/// Compiles each key in turn, section by section (the order problems are
/// reported in), then the rules across sections. Relative paths are taken
/// from `base`.
fn validate(doc: &Doc, base: &Path, env: &dyn Env) -> Result<Config, Vec<Problem>> {
    let mut check = check::Check::new(env, doc, base);
    let c = &mut check;
    let unmatched = c.choice("unmatched", [Unmatched::Forward, Unmatched::Deny]);
    let log_format = c.choice("log_format", [LogFormat::Text, LogFormat::Json]);
    let admin_token = server::admin_token(c);
    let (listen, admin) = server::addresses(c);
    let cpus = || std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = c.count("server.threads").map_or_else(cpus, |n| n as usize);
    let grace_period = c.duration("server.grace_period");
    let body_timeout = c.duration("server.body_timeout");
    let idle_timeout = c.read("server.idle_timeout", check::at_least_a_second);
    let header_timeout = c.duration("server.header_timeout");
    let max_buffered = c.size("server.max_buffered");
    let per_client = "server.max_buffered_per_client";
    let per_client = (doc.has(per_client)).then(|| c.read(per_client, check::memory_size));
    let min_body_rate = c.size("server.min_body_rate");
    // A per-peer limit above the total is allowed (the total binds first).
    let max_connections = c.count("server.max_connections").unwrap_or_default() as usize;
    let per_peer = c.count("server.max_connections_per_peer");
    let trusted_proxies = server::trusted_proxies(c);
    let (upstream, upstream_ca_file) = upstream::compile(c);
    let (listen_tls, listen_cert) = server::listen_tls(c);
    let (store, capacity, replay) = replay::compile(c);
    let headers = headers::compile(c);
    let (spool, redelivery) = spool::compile(c);
    let tracing = super::tracing::compile(c);
    let routes = routes::compile(c, &upstream);
    cross::check(c, &replay, max_buffered, &routes);
    let per_client = per_client.map(|p| p.unwrap_or(max_buffered));
    let max_buffered_per_client = cross::per_client(c, per_client, max_buffered, &routes);
    let process = ProcessConfig {
        log_format,
        listen,
        listen_tls,
        listen_cert,
        admin,
        threads,
        grace_period,
        idle_timeout: idle_timeout.unwrap_or_default(),
        upstream_ca_file,
        store,
        capacity,
        spool,
        tracing,
    };
    spool::check(c, &process, &routes);
    let policy = PolicyConfig {
        unmatched,
        admin_token,
        body_timeout,
        header_timeout,
        max_connections,
        max_connections_per_peer: per_peer.unwrap_or_default() as usize,
        max_buffered,
        max_buffered_per_client,
        min_body_rate,
        trusted_proxies,
        upstream,
        replay,
        headers,
        spool: redelivery,
        routes,
    };
    check.finish(Config { process, policy })
}
