//! `[upstream]` (the default application address, its timeouts, TLS options and
//! `Host` policy) and a route's own `upstream = "..."`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::check::Check;
use super::{HostHeader, Upstream};

/// The default upstream, and the CA file (`upstream.ca_file`, checked readable)
/// trusted for upstream TLS instead of the system roots.
pub(super) fn compile(c: &mut Check) -> (Upstream, Option<PathBuf>) {
    let d = c.doc();
    let connect_timeout = c.duration("upstream.connect_timeout");
    let read_timeout = c.duration("upstream.read_timeout");
    let host_header = c.choice(
        "upstream.host_header",
        [HostHeader::Keep, HostHeader::Upstream],
    );
    let address = c.text("upstream.address").unwrap_or_default();
    let e = endpoint(c, "upstream.address", address, d.bool("upstream.tls"));
    let upstream = Upstream {
        address: e.address,
        authority: e.authority,
        connect_timeout,
        read_timeout,
        tls: e.tls,
        sni: d.str("upstream.sni").map_or(e.host, String::from),
        verify: d.bool("upstream.verify").unwrap_or(true),
        host_header,
    };
    let ca_file = c.path("upstream.ca_file");
    if let Some(path) = &ca_file {
        c.readable("upstream.ca_file", path);
    }
    (upstream, ca_file)
}

/// A route's own upstream: its address (TLS by scheme, the SNI its host,
/// verified), with the timeouts and `Host` policy of the default.
pub(super) fn for_route(c: &mut Check, key: &str, value: &str, default: &Upstream) -> Upstream {
    let e = endpoint(c, key, value, None);
    Upstream {
        address: e.address,
        authority: e.authority,
        tls: e.tls,
        sni: e.host,
        verify: true,
        ..default.clone()
    }
}

/// Where an upstream is: `[http[s]://]host:port`, with TLS from the scheme or
/// the `tls` flag.
struct Endpoint {
    address: SocketAddr,
    /// `host:port` as written (the port added from the scheme if missing).
    authority: String,
    tls: bool,
    /// The host part of `authority`, without IPv6 brackets.
    host: String,
}

fn endpoint(c: &mut Check, key: &str, value: &str, tls_flag: Option<bool>) -> Endpoint {
    let (scheme_tls, rest) = if let Some(r) = value.strip_prefix("https://") {
        (Some(true), r)
    } else if let Some(r) = value.strip_prefix("http://") {
        (Some(false), r)
    } else {
        (None, value)
    };
    let rest = rest.trim_end_matches('/');
    let tls = match (scheme_tls, tls_flag) {
        (Some(a), Some(b)) if a != b => {
            c.problem(key, "the scheme and `tls` disagree; keep one");
            a
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => false,
    };
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !rest.ends_with(']');
    let authority = if has_port || scheme_tls.is_none() {
        rest.to_string()
    } else {
        format!("{rest}:{}", if tls { 443 } else { 80 })
    };
    let address = c.address(key, &authority);
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&authority)
        .to_string();
    Endpoint {
        address,
        authority,
        tls,
        host,
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{env, keys};
    use super::*;

    #[test]
    fn upstream_addresses_schemes_and_tls_options() {
        let text = r#"
[upstream]
address = "https://localhost:8443"
ca_file = "Cargo.toml"
host_header = "upstream"
[[route]]
path = "/a"
secrets = ["x"]
upstream = "http://127.0.0.1"
[[route]]
path = "/b"
secrets = ["x"]
upstream = "https://127.0.0.1"
"#;
        let c = from_str(text, &env()).unwrap();
        assert!(c.policy.upstream.tls);
        assert_eq!(c.policy.upstream.sni, "localhost");
        assert_eq!(c.policy.upstream.address.port(), 8443);
        assert_eq!(c.policy.upstream.authority, "localhost:8443");
        assert_eq!(c.policy.upstream.host_header, HostHeader::Upstream);
        assert!(c.policy.upstream.verify);
        assert!(c.process.upstream_ca_file.is_some());
        let a = &c.policy.routes[0].upstream;
        assert!(!a.tls);
        assert_eq!(a.address, "127.0.0.1:80".parse().unwrap());
        let b = &c.policy.routes[1].upstream;
        assert!(b.tls);
        assert_eq!(b.address, "127.0.0.1:443".parse().unwrap());

        let bad = r#"
[listen]
tls = { cert = "/nonexistent/cert.pem" }
[upstream]
address = "http://127.0.0.1:3000"
tls = true
ca_file = "/nonexistent/ca.pem"
host_header = "client"
[[route]]
path = "/a"
secrets = ["x"]
"#;
        let problems = from_str(bad, &env()).unwrap_err();
        assert_eq!(
            keys(&problems),
            vec![
                "upstream.host_header",
                "upstream.address",
                "upstream.ca_file",
                "listen.tls"
            ]
        );
    }

    #[test]
    fn a_route_upstream_keeps_the_default_timeouts_and_host_policy_only() {
        let text = r#"
[upstream]
address = "127.0.0.1:3000"
read_timeout = "7s"
sni = "app.internal"
verify = false
host_header = "upstream"
[[route]]
path = "/a"
secrets = ["x"]
upstream = "https://[::1]"
"#;
        let c = from_str(text, &env()).unwrap();
        let r = &c.policy.routes[0].upstream;
        assert_eq!(r.authority, "[::1]:443");
        assert_eq!(r.sni, "::1");
        assert!(r.tls && r.verify);
        assert_eq!(r.read_timeout, c.policy.upstream.read_timeout);
        assert_eq!(r.host_header, HostHeader::Upstream);
    }
}
