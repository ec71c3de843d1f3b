//! Loading: the file (or none), the environment over it, then validation,
//! section by section; the entry points [`load`], [`load_with`] and
//! [`from_str`].

use std::path::{Path, PathBuf};

use super::doc::{self, Doc};
use super::env::Provenance;
use super::{
    Config, ConfigError, Env, EnvSource, Problem, check, cross, env, headers, replay, routes,
    server, spool, upstream,
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

/// Compiles each section in turn (the order problems are reported in), then
/// the rules across sections. Relative paths are taken from `base`.
fn validate(doc: &Doc, base: &Path, env: &dyn Env) -> Result<Config, Vec<Problem>> {
    let mut c = check::Check::new(env, doc);
    let unmatched = routes::unmatched(&mut c);
    let s = server::compile(&mut c, base);
    let (upstream, upstream_ca_file) = upstream::compile(&mut c, base);
    let (listen_tls, listen_cert) = server::listen_tls(&mut c, base);
    let replay = replay::compile(&mut c, base);
    let headers = headers::compile(&mut c);
    let spool = spool::compile(&mut c, base);
    let tracing = super::tracing::compile(&mut c);
    let routes = routes::compile(&mut c, base, &upstream);
    cross::check(&mut c, &replay, s.max_buffered, &routes);
    let per_client = cross::per_client(&mut c, &s, &routes);
    spool::check(&mut c, &spool, &replay, &routes);
    c.finish(Config {
        unmatched,
        log_format: s.log_format,
        listen: s.listen,
        listen_tls,
        listen_cert,
        admin: s.admin,
        admin_token: s.admin_token,
        upstream_ca_file,
        threads: s.threads,
        grace_period: s.grace_period,
        body_timeout: s.body_timeout,
        idle_timeout: s.idle_timeout,
        header_timeout: s.header_timeout,
        max_connections: s.max_connections,
        max_connections_per_peer: s.max_connections_per_peer,
        max_buffered: s.max_buffered,
        max_buffered_per_client: per_client,
        min_body_rate: s.min_body_rate,
        trusted_proxies: s.trusted_proxies,
        upstream,
        replay,
        headers,
        spool,
        tracing,
        routes,
    })
}
