//! The listeners and `[server]`: the public and admin addresses, the
//! listener's TLS, the admin token, and the peers believed for
//! `X-Forwarded-For` (the rest of `[server]` is read by `load.rs` as it is).

use std::net::SocketAddr;

use super::check::Check;
use super::secret::Secret;
use super::{ListenCert, ListenTls};
use crate::source::{self, AllowList, Cidr};

/// `server.trusted_proxies`: addresses and CIDRs.
pub(super) fn trusted_proxies(c: &mut Check) -> AllowList {
    let key = "server.trusted_proxies";
    let list = c.doc().list(key).unwrap_or_default();
    AllowList::new(cidrs(c, key, list, false))
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
            // Fixed words, never the entry.
            Err(e) => {
                let or = if persona && e == source::CidrError::Syntax {
                    ", or \"persona\""
                } else {
                    ""
                };
                c.problem_with(
                    format!("{key}[{j}]"),
                    format!("{e}{or} (the value is not repeated here)"),
                );
            }
        }
    }
    out
}

/// The public and admin listeners' addresses, which must differ.
pub(super) fn addresses(c: &mut Check) -> (SocketAddr, SocketAddr) {
    let listen = c.address_at("listen.address");
    let admin = c.address_at("admin.address");
    if listen == admin && listen.port() != 0 {
        c.problem(
            "admin.address",
            "must differ from listen.address: the admin port is never public",
        );
    }
    (listen, admin)
}

/// `admin.token`: the bearer token that lets a peer other than loopback make
/// the admin listener's state-changing calls, read like every secret (a
/// SIGHUP reload reads it again), from `env:` or `file:` only.
pub(super) fn admin_token(c: &mut Check) -> Option<Secret> {
    let refused = "must be `env:NAME` or `file:/path`: a token is not written in the file (the value is not repeated here)";
    let spec = c.reference("admin.token", refused)?;
    c.secret("admin.token", spec)
}

/// `listen.tls`: the file paths, and the key pair loaded from them and matched
/// (kept, so the listener need not load it again).
pub(super) fn listen_tls(c: &mut Check) -> (Option<ListenTls>, Option<ListenCert>) {
    if !c.doc().has_table("listen.tls") {
        return (None, None);
    }
    let (Some(cert), Some(key)) = (c.path("listen.tls.cert"), c.path("listen.tls.key")) else {
        c.problem("listen.tls", "needs both cert and key (PEM file paths)");
        return (None, None);
    };
    let tls = ListenTls { cert, key };
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
        assert_eq!(
            (c.policy.max_connections, c.policy.max_connections_per_peer),
            (4096, 256)
        );
        // A per-peer limit above the total is allowed (the total binds first).
        let c = format!("[server]\nmax_connections = 10\nmax_connections_per_peer = 20\n{ROUTE}");
        let c = from_str(&c, &env()).unwrap();
        assert_eq!(
            (c.policy.max_connections, c.policy.max_connections_per_peer),
            (10, 20)
        );
    }

    /// `admin.token` is read from `env:` or `file:` only; a literal is
    /// refused under its key without the value, and so is an empty token.
    #[test]
    fn the_admin_token_is_a_secret_source_never_a_literal() {
        let with = |token: &str| format!("[admin]\ntoken = \"{token}\"\n{ROUTE}");
        let c = from_str(&with("env:SECRET"), &env()).unwrap();
        assert_eq!(
            c.policy.admin_token.as_ref().unwrap().expose(),
            b"wbhsec_abc"
        );
        assert!(!format!("{c:?}").contains("wbhsec_abc"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "t0ken-from-a-file\n").unwrap();
        let c = from_str(&with(&format!("file:{}", file.display())), &env()).unwrap();
        assert_eq!(
            c.policy.admin_token.as_ref().unwrap().expose(),
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
        assert!(
            from_str(ROUTE, &env())
                .unwrap()
                .policy
                .admin_token
                .is_none()
        );
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
        assert_eq!(c.process.listen_tls.as_ref().unwrap().cert, cert);
        let kept = c
            .process
            .listen_cert
            .as_ref()
            .expect("the loaded key pair is kept");
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
