//! The process around the routes: `log_format`, `[listen]` (address and TLS),
//! `[admin]` (address and the token of state-changing calls) and `[server]`
//! (threads, timeouts, the body memory budget and body rate).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::check::Check;
use super::defaults::{
    DEFAULT_ADMIN, DEFAULT_BODY_TIMEOUT, DEFAULT_GRACE_PERIOD, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_BUFFERED, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER, DEFAULT_MIN_BODY_RATE,
};
use super::secret::Secret;
use super::{ListenCert, ListenTls, LogFormat};
use crate::source::{self, AllowList, Cidr};

/// The compiled settings of this section, moved into [`super::Config`]'s
/// fields of the same names.
pub(super) struct Settings {
    pub log_format: LogFormat,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub admin_token: Option<Secret>,
    pub threads: usize,
    pub grace_period: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_buffered: u64,
    /// `None`: the default, settled once the routes are known (`cross`).
    pub max_buffered_per_client: Option<u64>,
    pub min_body_rate: u64,
    pub trusted_proxies: AllowList,
}

pub(super) fn compile(c: &mut Check, base: &Path) -> Settings {
    let d = c.doc();
    let log_format = c.choice(
        "log_format",
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        LogFormat::Text,
    );
    let admin_token = d.str("admin.token").and_then(|spec| token(c, spec, base));
    let (listen, admin) = addresses(c);
    let threads = c.at_least_one("server.threads").map_or_else(
        || {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        },
        |n| n as usize,
    );
    let grace_period = c.duration("server.grace_period", DEFAULT_GRACE_PERIOD);
    let body_timeout = c.duration("server.body_timeout", DEFAULT_BODY_TIMEOUT);
    let idle_timeout = c.duration("server.idle_timeout", DEFAULT_IDLE_TIMEOUT);
    let header_timeout = c.duration("server.header_timeout", DEFAULT_HEADER_TIMEOUT);
    if idle_timeout < Duration::from_secs(1) {
        c.problem("server.idle_timeout", "must be at least 1s");
    }
    let max_buffered = c.size("server.max_buffered", DEFAULT_MAX_BUFFERED);
    let max_buffered_per_client = d
        .has("server.max_buffered_per_client")
        .then(|| c.size("server.max_buffered_per_client", max_buffered));
    let min_body_rate = c.size("server.min_body_rate", DEFAULT_MIN_BODY_RATE);
    // A per-peer limit above the total is allowed (the total binds first): a
    // small `max_connections` need not bring the per-peer default down with it.
    let count = |c: &mut Check, key, default| c.at_least_one(key).map_or(default, |n| n as usize);
    let max_connections = count(c, "server.max_connections", DEFAULT_MAX_CONNECTIONS);
    let max_connections_per_peer = count(
        c,
        "server.max_connections_per_peer",
        DEFAULT_MAX_CONNECTIONS_PER_PEER,
    );
    let trusted_proxies = match d.list("server.trusted_proxies") {
        None => AllowList::default(),
        Some(list) => AllowList::new(cidrs(c, "server.trusted_proxies", list, false)),
    };
    Settings {
        trusted_proxies,
        log_format,
        listen,
        admin,
        admin_token,
        threads,
        grace_period,
        body_timeout,
        idle_timeout,
        header_timeout,
        max_connections,
        max_connections_per_peer,
        max_buffered,
        max_buffered_per_client,
        min_body_rate,
    }
}

/// A list of CIDRs (and, where `persona` is allowed, the `"persona"`
/// shorthand) under `key`, each bad entry reported under `key[j]`.
pub(super) fn cidrs(c: &mut Check, key: &str, list: &[String], persona: bool) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (j, entry) in list.iter().enumerate() {
        let parsed = if persona {
            source::parse_entry(entry)
        } else {
            Cidr::parse(entry).map(|c| vec![c])
        };
        match parsed {
            Ok(mut v) => out.append(&mut v),
            Err(e) => c.problem_with(format!("{key}[{j}]"), cidr_message(e, persona)),
        }
    }
    out
}

/// A [`source::CidrError`]'s message (fixed words, never the entry).
fn cidr_message(e: source::CidrError, persona: bool) -> String {
    let also = if persona && e == source::CidrError::Syntax {
        ", or \"persona\" (the value is not repeated here)"
    } else {
        " (the value is not repeated here)"
    };
    format!("{e}{also}")
}

/// The public and admin listeners' addresses, which must differ.
fn addresses(c: &mut Check) -> (SocketAddr, SocketAddr) {
    let d = c.doc();
    let listen = c.address(
        "listen.address",
        d.str("listen.address").unwrap_or(DEFAULT_LISTEN),
    );
    let admin = c.address(
        "admin.address",
        d.str("admin.address").unwrap_or(DEFAULT_ADMIN),
    );
    if listen == admin && listen.port() != 0 {
        c.problem(
            "admin.address",
            "must differ from listen.address: the admin port is never public",
        );
    }
    (listen, admin)
}

/// `admin.token`: the bearer token that lets a peer other than loopback make
/// the admin listener's state-changing calls. A secret source only (a token
/// is not written in the file, where a literal would end up in backups and
/// diffs); read like every secret, so a SIGHUP reload reads it again. No
/// message repeats it.
fn token(c: &mut Check, spec: &str, base: &Path) -> Option<Secret> {
    if !(spec.starts_with("env:") || spec.starts_with("file:")) {
        c.problem(
            "admin.token",
            "must be `env:NAME` or `file:/path`: a token is not written in the file (the value is not repeated here)",
        );
        return None;
    }
    c.secret("admin.token", spec, base)
}

/// `listen.tls`: the file paths, and the key pair loaded from them and matched
/// (kept, so the listener need not load it again).
pub(super) fn listen_tls(c: &mut Check, base: &Path) -> (Option<ListenTls>, Option<ListenCert>) {
    let d = c.doc();
    if !d.has_table("listen.tls") {
        return (None, None);
    }
    let (Some(cert), Some(key)) = (d.str("listen.tls.cert"), d.str("listen.tls.key")) else {
        c.problem("listen.tls", "needs both cert and key (PEM file paths)");
        return (None, None);
    };
    let tls = ListenTls {
        cert: base.join(cert),
        key: base.join(key),
    };
    // Both checked, so both problems are reported.
    let readable = [
        c.readable("listen.tls.cert", &tls.cert),
        c.readable("listen.tls.key", &tls.key),
    ];
    if readable.contains(&false) {
        return (Some(tls), None);
    }
    match crate::tls::load_certified_key(&tls) {
        Ok(key) => (Some(tls), Some(ListenCert(key))),
        Err(e) => {
            // The loader's message names the files; only its gist is passed on.
            c.problem("listen.tls", tls_gist(&e));
            (Some(tls), None)
        }
    }
}

/// The gist of a [`crate::tls::load_certified_key`] error, whose text names the
/// files: fixed words only.
fn tls_gist(e: &str) -> &'static str {
    if e.contains("does not match") {
        "the private key does not match the certificate"
    } else if e.contains("unsupported type") {
        "the private key is of an unsupported type"
    } else if e.contains("PEM expected") {
        "no certificate in cert or no private key in key (PEM files expected)"
    } else if e.contains("crypto provider") {
        "no TLS crypto provider is installed"
    } else {
        "cannot load the certificate and key (PEM files expected)"
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys, write_cert};

    const ROUTE: &str = "[[route]]\npath = \"/a\"\nsecrets = [\"x\"]\n";

    #[test]
    fn listeners_differ_threads_and_idle_timeout_are_bounded() {
        let text = format!(
            "log_format = \"xml\"\n[listen]\naddress = \"127.0.0.1:8080\"\n\
             [admin]\naddress = \"127.0.0.1:8080\"\n\
             [server]\nthreads = 0\nidle_timeout = \"500ms\"\n\
             max_connections = 0\nmax_connections_per_peer = 0\n{ROUTE}"
        );
        let p = from_str(&text, &env()).unwrap_err();
        assert_eq!(
            keys(&p),
            vec![
                "log_format",
                "admin.address",
                "server.threads",
                "server.idle_timeout",
                "server.max_connections",
                "server.max_connections_per_peer"
            ]
        );
        // Port 0 on both (tests) is allowed: the system picks two ports.
        let text = "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n";
        let c = from_str(&format!("{text}{ROUTE}"), &env()).unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_peer), (4096, 256));
        // A per-peer limit above the total is allowed (the total binds first).
        let c = format!("[server]\nmax_connections = 10\nmax_connections_per_peer = 20\n{ROUTE}");
        let c = from_str(&c, &env()).unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_peer), (10, 20));
    }

    /// `admin.token` is read from `env:` or `file:` only; a literal is
    /// refused under its key without the value, and so is an empty token.
    #[test]
    fn the_admin_token_is_a_secret_source_never_a_literal() {
        let with = |token: &str| format!("[admin]\ntoken = \"{token}\"\n{ROUTE}");
        let c = from_str(&with("env:SECRET"), &env()).unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), b"wbhsec_abc");
        assert!(!format!("{c:?}").contains("wbhsec_abc"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "t0ken-from-a-file\n").unwrap();
        let c = from_str(&with(&format!("file:{}", file.display())), &env()).unwrap();
        assert_eq!(
            c.admin_token.as_ref().unwrap().expose(),
            b"t0ken-from-a-file"
        );

        let literal = "s3cr3t-admin-t0ken";
        let p = from_str(&with(literal), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["admin.token"]);
        assert!(p[0].message.contains("`env:NAME` or `file:/path`"), "{p:?}");
        assert!(!format!("{p:?}").contains(literal), "{p:?}");

        std::fs::write(&file, "\n").unwrap();
        let p = from_str(&with(&format!("file:{}", file.display())), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["admin.token"]);
        assert!(p[0].message.contains("empty"), "{p:?}");

        // None unless set.
        assert!(from_str(ROUTE, &env()).unwrap().admin_token.is_none());
    }

    #[test]
    fn the_listener_key_pair_is_loaded_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "a");
        let tls = format!(
            "[listen]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n{ROUTE}",
            cert.display(),
            key.display()
        );
        let c = from_str(&tls, &env()).unwrap();
        assert_eq!(c.listen_tls.as_ref().unwrap().cert, cert);
        let kept = c.listen_cert.as_ref().expect("the loaded key pair is kept");
        assert_eq!(kept.key().cert.len(), 1);
        // What the listener needs next, without reading the files again.
        let checked = crate::tls::check_loaded(kept.key()).unwrap();
        assert!(checked.warnings.is_empty());
        assert!(!format!("{c:?}").contains("BEGIN"));

        // Another pair's key: loaded, found not to match, reported by its gist.
        let (_, other_key) = write_cert(dir.path(), "b");
        let mixed = tls.replace(&key.display().to_string(), &other_key.display().to_string());
        let p = from_str(&mixed, &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["listen.tls"]);
        assert_eq!(
            p[0].message,
            "the private key does not match the certificate"
        );
    }
}
