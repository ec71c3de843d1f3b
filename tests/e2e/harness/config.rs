//! The configuration of a proxy under test: one `toml::Table`, every key set by
//! its dotted name, a route's keys through [`Route`]; and the environment its
//! secrets come from.

use std::net::SocketAddr;

use toml::{Table, Value};

use super::{ROUTE, Upstream, free_port, secret};

/// The environment variable holding the first route's `i`-th secret.
pub(super) fn secret_env(i: usize) -> String {
    match i {
        0 => "PERSONA_WEBHOOK_SECRET".into(),
        _ => format!("PERSONA_WEBHOOK_SECRET_{i}"),
    }
}

/// The `persona-guard.toml` of a proxy under test, and its environment.
///
/// Starts from one route at [`ROUTE`] whose secrets come from the
/// environment, and a memory replay store. Any key is set by its dotted name
/// (`.set("replay.ttl", "2s")`); a route's keys through [`ProxyBuilder::route`]
/// or [`ProxyBuilder::add_route`].
#[derive(Clone)]
pub struct ProxyBuilder {
    pub(super) config: Table,
    pub(super) secrets: Vec<String>,
    pub(super) env: Vec<(String, String)>,
}

impl ProxyBuilder {
    pub(super) fn new() -> ProxyBuilder {
        let b = ProxyBuilder {
            config: Table::new(),
            secrets: Vec::new(),
            env: Vec::new(),
        };
        let mut route = Table::new();
        route.insert("path".into(), ROUTE.into());
        route.insert("tolerance".into(), "5m".into());
        route.insert("max_body".into(), "1MiB".into());
        b.set("upstream.address", format!("127.0.0.1:{}", free_port()))
            .set("upstream.connect_timeout", "1s")
            .set("upstream.read_timeout", "5s")
            .set("replay.store", "memory")
            .set("replay.ttl", "15m")
            .set("replay.capacity", 100_000)
            .set("route", vec![Value::Table(route)])
            .secrets(vec![secret()])
    }

    /// Sets `key` (dotted: `server.grace_period`), making the tables on the way.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (tables, last) = match key.rsplit_once('.') {
            Some((tables, last)) => (Some(tables), last),
            None => (None, key),
        };
        let mut t = &mut self.config;
        for name in tables.into_iter().flat_map(|k| k.split('.')) {
            t = t
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{name} in {key} is not a table"));
        }
        t.insert(last.to_string(), value.into());
        self
    }

    /// Applies `f`: a set of edits kept together (e.g. a TLS listener).
    pub fn apply(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }

    /// The value of `key` (dotted), if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let mut parts = key.split('.');
        let mut v = self.config.get(parts.next()?)?;
        for p in parts {
            v = v.as_table()?.get(p)?;
        }
        Some(v)
    }

    fn routes(&mut self) -> &mut Vec<Value> {
        self.config
            .get_mut("route")
            .and_then(Value::as_array_mut)
            .expect("a route array")
    }

    /// Edits the first route (`path = ROUTE`).
    pub fn route(mut self, f: impl FnOnce(Route) -> Route) -> Self {
        let first = &mut self.routes()[0];
        let t = std::mem::take(first.as_table_mut().unwrap());
        *first = Value::Table(f(Route(t)).0);
        self
    }

    /// Adds a route at `path` opening with the first route's secrets, edited by `f`.
    pub fn add_route(mut self, path: &str, f: impl FnOnce(Route) -> Route) -> Self {
        let secrets = self.routes()[0]["secrets"].clone();
        let mut t = Table::new();
        t.insert("path".into(), path.into());
        t.insert("secrets".into(), secrets);
        self.routes().push(Value::Table(f(Route(t)).0));
        self
    }

    /// Forwards to `up`.
    pub fn upstream(self, up: &Upstream) -> Self {
        self.upstream_addr(up.addr)
    }

    pub fn upstream_addr(self, addr: SocketAddr) -> Self {
        self.set("upstream.address", addr.to_string())
    }

    /// The first route's secrets, passed in the environment.
    pub fn secrets(mut self, secrets: Vec<String>) -> Self {
        let refs: Vec<String> = (0..secrets.len())
            .map(|i| format!("env:{}", secret_env(i)))
            .collect();
        self.secrets = secrets;
        self.route(|r| r.set("secrets", refs))
    }

    /// The first route's secrets.
    pub fn secret_values(&self) -> &[String] {
        &self.secrets
    }

    /// Uses the Redis replay store at `url`.
    pub fn redis(self, url: &str) -> Self {
        self.set("replay.store", "redis")
            .set("replay.redis_url", url)
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The configuration file as it is written (listening on free ports
    /// unless the addresses were set).
    pub fn toml(&self) -> String {
        let mut b = self.clone();
        for key in ["listen.address", "admin.address"] {
            if b.get(key).is_none() {
                b = b.set(key, format!("127.0.0.1:{}", free_port()));
            }
        }
        toml::to_string(&b.config).expect("a TOML table serialises")
    }
}

/// One `[[route]]` table being edited.
pub struct Route(Table);

impl Route {
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    pub fn remove(mut self, key: &str) -> Self {
        self.0.remove(key);
        self
    }
}
