//! Who may make the admin listener's state-changing calls (see [`super`]):
//! a peer at `127.0.0.1` or `::1`, or a request carrying
//! `Authorization: Bearer <[admin] token>`; anything else is refused with 403,
//! counted and logged with the peer, never the token.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, Method, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use super::{Admin, error};

/// Whether `ip` is `127.0.0.1` or `::1` (an IPv4-mapped `::ffff:127.0.0.1`
/// is `127.0.0.1`). The rest of 127.0.0.0/8 is not: the rule is two
/// addresses, as written.
fn is_loopback_peer(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Why [`allowed`] refused a state-changing call (a metric label of
/// [`crate::metrics::ADMIN_REFUSALS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not from loopback, no `Authorization` header.
    NoToken,
    /// Not from loopback, an `Authorization` that is not `Bearer <[admin] token>`
    /// (or no token is configured).
    WrongToken,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::WrongToken => "wrong_token",
        }
    }

    /// 403 `forbidden` (the same words whatever the reason).
    pub(super) fn response(self) -> Response<Vec<u8>> {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This call changes state: it is answered from 127.0.0.1 or ::1, or with `Authorization: Bearer <token>` where the token is [admin] token (when one is configured).",
        )
    }
}

/// Whether a state-changing call from `peer` with `headers` may run: a
/// loopback peer, or `Authorization: Bearer <token>` (one header, the scheme
/// in any case) equal to `token`, compared in constant time.
fn allowed(peer: Option<IpAddr>, headers: &HeaderMap, token: Option<&[u8]>) -> Result<(), Refusal> {
    if peer.is_some_and(is_loopback_peer) {
        return Ok(());
    }
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::NoToken);
    };
    let (Some(token), None) = (token, values.next()) else {
        return Err(Refusal::WrongToken);
    };
    let bytes = value.as_bytes();
    let presented = match bytes.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
        _ => return Err(Refusal::WrongToken),
    };
    if bool::from(presented.ct_eq(token)) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

impl Admin {
    /// The one check every state-changing call passes (see the module
    /// header); a refusal is counted and logged with the peer, never the token.
    pub(super) fn authorize(
        &self,
        session: &ServerSession,
        method: &Method,
        path: &str,
    ) -> Result<(), Refusal> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let policy = self.shared.policy.load();
        let token = policy
            .config
            .policy
            .admin_token
            .as_ref()
            .map(|t| t.expose());
        let refusal = match allowed(peer, &session.req_header().headers, token) {
            Ok(()) => return Ok(()),
            Err(r) => r,
        };
        self.shared
            .metrics
            .admin_refused
            .with_label_values(&[refusal.label()])
            .inc();
        tracing::warn!(
            peer = ?peer,
            %method,
            path,
            reason = refusal.label(),
            "admin: a state-changing call refused (not from 127.0.0.1 or ::1, and no valid [admin] token)"
        );
        Err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal's label is a series exported at 0 from the start.
    #[test]
    fn each_refusal_is_a_pre_registered_metric_label() {
        let labels = [Refusal::NoToken.label(), Refusal::WrongToken.label()];
        assert_eq!(labels, crate::metrics::ADMIN_REFUSALS);
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn state_changes_answer_127_0_0_1_and_1_only_or_the_token() {
        let none = HeaderMap::new();
        for ok in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                allowed(Some(ok.parse().unwrap()), &none, None),
                Ok(()),
                "{ok}"
            );
        }
        for refused in [
            "127.0.0.2",
            "127.1.2.3",
            "10.0.0.7",
            "::2",
            "::ffff:10.0.0.7",
        ] {
            let ip = Some(refused.parse().unwrap());
            assert_eq!(allowed(ip, &none, None), Err(Refusal::NoToken), "{refused}");
            assert_eq!(allowed(ip, &none, Some(b"t0ken")), Err(Refusal::NoToken));
        }
        assert_eq!(allowed(None, &none, Some(b"t0ken")), Err(Refusal::NoToken));

        let peer = Some("10.0.0.7".parse().unwrap());
        let token = Some(&b"t0ken"[..]);
        for good in ["Bearer t0ken", "bearer t0ken", "BEARER t0ken"] {
            assert_eq!(allowed(peer, &bearer(good), token), Ok(()), "{good}");
        }
        for bad in [
            "Bearer t0ke",
            "Bearer t0kenn",
            "Bearer  t0ken",
            "Bearer T0KEN",
            "Basic t0ken",
            "t0ken",
            "Bearer",
            "Bearer ",
        ] {
            assert_eq!(
                allowed(peer, &bearer(bad), token),
                Err(Refusal::WrongToken),
                "{bad}"
            );
        }
        // No token configured: no header opens it.
        assert_eq!(
            allowed(peer, &bearer("Bearer t0ken"), None),
            Err(Refusal::WrongToken)
        );
        // Two Authorization headers are refused, even with the right one first.
        let mut two = bearer("Bearer t0ken");
        two.append(http::header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(allowed(peer, &two, token), Err(Refusal::WrongToken));
    }
}
