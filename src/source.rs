//! Where a request comes from, and whether a route admits it: CIDR blocks
//! ([`Cidr`]), lists of them ([`AllowList`]), the `"persona"` shorthand for
//! Persona's published addresses (`source/persona_ips.txt`, shipped with the
//! binary), and the client address behind trusted proxies
//! ([`client_address`]). Pure: no I/O, and no error quotes its input.

use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};

/// The `allow_from` entry that stands for Persona's published addresses.
pub const PERSONA: &str = "persona";

/// Persona's webhook and workflow source addresses, with their source and
/// date in the file's header (one address or CIDR per line, `#` comments).
const PERSONA_LIST: &str = include_str!("source/persona_ips.txt");

/// An IPv4 or IPv6 network: an address and a prefix length. A bare address is
/// a network of one (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

/// Why an entry is not a [`Cidr`]. The messages never repeat the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("is not an IP address or a CIDR such as \"203.0.113.0/24\" or \"2001:db8::/32\"")]
    Syntax,
    #[error("has a prefix length longer than its address (at most 32 for IPv4, 128 for IPv6)")]
    PrefixTooLong,
    #[error(
        "has bits set after its prefix length; write the network's first address, as in \"203.0.113.0/24\""
    )]
    HostBits,
}

impl Cidr {
    /// Parses `203.0.113.0/24`, `2001:db8::/32` or a bare address. A network
    /// written with bits set after its prefix (`203.0.113.7/24`) is refused
    /// as a likely typo rather than silently widened.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            None => (s, None),
            Some((a, p)) => (a, Some(p)),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Syntax)?;
        let net = match prefix {
            None => IpNet::from(addr),
            // Plain digits only (`u8::from_str` would take `+8`).
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                let len = p.parse::<u8>().map_err(|_| CidrError::PrefixTooLong)?;
                IpNet::new(addr, len).map_err(|_| CidrError::PrefixTooLong)?
            }
            Some(_) => return Err(CidrError::Syntax),
        };
        if net.trunc() != net {
            return Err(CidrError::HostBits);
        }
        Ok(Cidr(canonical(net)))
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:192.0.2.1`) count as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// An IPv4-mapped network (`::ffff:192.0.2.0/120`) as the IPv4 network it
/// covers, since addresses are compared in their canonical form.
fn canonical(net: IpNet) -> IpNet {
    match (net.addr().to_canonical(), net.prefix_len()) {
        (IpAddr::V4(v4), len @ 96..) if net.addr().is_ipv6() => {
            Ipv4Net::new(v4, len - 96).map_or(net, IpNet::V4)
        }
        _ => net,
    }
}

/// A set of networks; an address is in it when any network contains it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        AllowList(cidrs)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// One `allow_from` entry: `"persona"` (Persona's published addresses) or a
/// [`Cidr`].
pub fn parse_entry(s: &str) -> Result<Vec<Cidr>, CidrError> {
    if s == PERSONA {
        Ok(persona())
    } else {
        Cidr::parse(s).map(|c| vec![c])
    }
}

/// Persona's published addresses, as shipped in `source/persona_ips.txt`
/// (a unit test checks that every line parses).
pub fn persona() -> Vec<Cidr> {
    persona_lines()
        .filter_map(|l| Cidr::parse(l).ok())
        .collect()
}

fn persona_lines() -> impl Iterator<Item = &'static str> {
    PERSONA_LIST
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

/// The client address of a request from TCP peer `peer`, given the values of
/// its `X-Forwarded-For` headers in the order they came.
///
/// When the peer is not a trusted proxy, it is the client, and every
/// `X-Forwarded-For` is ignored (a client can write anything there). When it
/// is, the entries (all headers' comma-separated entries, in order) are read
/// from the right, skipping trusted proxies; the first one that is not
/// trusted is the client. With no entry at all, the peer is the client; when
/// every entry is a trusted proxy, the left-most is.
///
/// `None` means the address cannot be told: an entry reached on the walk that
/// is not an address (`unknown`, an obfuscated RFC 7239 name, garbage, an
/// empty element). The proxy in front wrote what it was given, so nothing to
/// its left can be trusted either, and a route with `allow_from` refuses the
/// request. An entry may carry a port (`192.0.2.1:443`, `[2001:db8::1]:443`).
pub fn client_address<'a>(
    peer: IpAddr,
    trusted: &AllowList,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let mut leftmost = peer;
    for value in forwarded_for.rev() {
        for entry in value.split(|b| *b == b',').rev() {
            let ip = forwarded_entry(entry)?;
            if !trusted.contains(ip) {
                return Some(ip);
            }
            leftmost = ip;
        }
    }
    Some(leftmost)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port.
fn forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => s.parse::<SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str]) -> AllowList {
        AllowList::new(entries.iter().map(|e| Cidr::parse(e).unwrap()).collect())
    }

    #[test]
    fn cidrs_contain_their_addresses_only() {
        let c = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(c.contains(ip("203.0.113.0")));
        assert!(c.contains(ip("203.0.113.255")));
        assert!(!c.contains(ip("203.0.112.255")));
        assert!(!c.contains(ip("203.0.114.0")));
        // IPv4-mapped IPv6 is the IPv4 address; other IPv6 never matches IPv4.
        assert!(c.contains(ip("::ffff:203.0.113.9")));
        assert!(!c.contains(ip("2001:db8::1")));

        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));

        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("203.0.113.1")));
        let v6one = Cidr::parse("::1").unwrap();
        assert!(v6one.contains(ip("::1")));
        assert!(!v6one.contains(ip("::2")));

        for all in ["0.0.0.0/0", "::/0"] {
            let c = Cidr::parse(all).unwrap();
            assert!(c.contains(ip(if all == "::/0" {
                "2001:db8::1"
            } else {
                "198.51.100.1"
            })));
        }
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        // A mapped network is the IPv4 network it covers.
        let mapped = Cidr::parse("::ffff:192.0.2.0/120").unwrap();
        assert!(mapped.contains(ip("192.0.2.77")));
        assert!(!mapped.contains(ip("192.0.3.1")));
    }

    #[test]
    fn odd_prefixes_are_exact() {
        let c = Cidr::parse("10.0.0.0/9").unwrap();
        assert!(c.contains(ip("10.127.255.255")));
        assert!(!c.contains(ip("10.128.0.0")));
        let c = Cidr::parse("2001:db8::/127").unwrap();
        assert!(c.contains(ip("2001:db8::1")));
        assert!(!c.contains(ip("2001:db8::2")));
    }

    #[test]
    fn bad_cidrs_are_refused_by_kind() {
        use CidrError::*;
        for (s, want) in [
            ("", Syntax),
            ("persona.com", Syntax),
            ("203.0.113.0/", Syntax),
            ("203.0.113.0/+8", Syntax),
            ("203.0.113.0/24/1", Syntax),
            (" 203.0.113.0/24", Syntax),
            ("203.0.113.0/33", PrefixTooLong),
            ("2001:db8::/129", PrefixTooLong),
            ("203.0.113.0/999", PrefixTooLong),
            ("203.0.113.7/24", HostBits),
            ("2001:db8::1/32", HostBits),
        ] {
            assert_eq!(Cidr::parse(s), Err(want), "{s:?}");
        }
    }

    #[test]
    fn the_persona_list_parses_whole() {
        let lines: Vec<_> = persona_lines().collect();
        for l in &lines {
            assert!(Cidr::parse(l).is_ok(), "persona_ips.txt: {l}");
        }
        assert_eq!(persona().len(), lines.len());
        assert_eq!(lines.len(), 22);
        let p = AllowList::new(parse_entry(PERSONA).unwrap());
        assert!(p.contains(ip("35.232.44.140")));
        assert!(!p.contains(ip("127.0.0.1")));
    }

    fn resolve(peer: &str, trusted: &[&str], xff: &[&str]) -> Option<IpAddr> {
        client_address(ip(peer), &list(trusted), xff.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            resolve("198.51.100.7", &[], &["35.232.44.140"]),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve(
                "198.51.100.7",
                &["10.0.0.0/8"],
                &["35.232.44.140", "garbage"]
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve("::ffff:198.51.100.7", &[], &[]),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let t = &["10.0.0.0/8"];
        // The spoofed left part is never read.
        assert_eq!(
            resolve("10.0.0.1", t, &["1.1.1.1, 35.232.44.140, 10.0.0.2"]),
            Some(ip("35.232.44.140"))
        );
        // Entries of several headers, in order: the last header is the right-most.
        assert_eq!(
            resolve(
                "10.0.0.1",
                t,
                &["1.1.1.1", "35.232.44.140", "10.0.0.3,10.0.0.2"]
            ),
            Some(ip("35.232.44.140"))
        );
        assert_eq!(
            resolve("10.0.0.1", t, &["1.1.1.1", "10.0.0.2"]),
            Some(ip("1.1.1.1"))
        );
        // Ports and tabs.
        assert_eq!(
            resolve("10.0.0.1", t, &["\t192.0.2.1:443 "]),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            resolve("10.0.0.1", t, &["[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        // No header: the proxy itself; every entry trusted: the left-most.
        assert_eq!(resolve("10.0.0.1", t, &[]), Some(ip("10.0.0.1")));
        assert_eq!(
            resolve("10.0.0.1", t, &["10.0.0.9, 10.0.0.2"]),
            Some(ip("10.0.0.9"))
        );
    }

    #[test]
    fn a_malformed_entry_on_the_walk_leaves_the_client_unknown() {
        let t = &["10.0.0.0/8"];
        for xff in [
            &["unknown"][..],
            &["35.232.44.140, garbage"],
            &["35.232.44.140,"],
            &[""],
            &["35.232.44.140, 10.0.0.2, _hidden"],
            &["35.232.44.140", "\u{e9}"],
        ] {
            assert_eq!(resolve("10.0.0.1", t, xff), None, "{xff:?}");
        }
        // Left of the client, garbage is never read.
        assert_eq!(
            resolve("10.0.0.1", t, &["garbage, 35.232.44.140"]),
            Some(ip("35.232.44.140"))
        );
    }
}
