//! A route's authentication beside the signature (the contract's §10):
//! `require_headers` and `[route.oauth]`. Values are never repeated in a
//! message: a header's value is a secret, and a name may be one pasted in
//! the wrong place.

use std::time::Duration;

use http::HeaderName;

use super::check::Check;
use crate::auth::{OAuthRule, RequiredHeader};

/// The shortest `jwks_refresh`.
const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);

/// Headers persona-guard reads or writes itself: never a token header.
const OWN: [&str; 7] = [
    "persona-signature",
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
];

/// `route[i].require_headers`: each name a header name persona-guard does
/// not own, once (in any case); each value a secret that is not empty.
pub(super) fn require_headers(c: &mut Check, i: usize) -> Vec<RequiredHeader> {
    let key = format!("route[{i}].require_headers");
    let Some(pairs) = c.doc().map(&key).map(<[_]>::to_vec) else {
        return Vec::new();
    };
    if pairs.is_empty() {
        c.problem(
            key.as_str(),
            "an empty table requires nothing; remove the key",
        );
    }
    let mut out: Vec<RequiredHeader> = Vec::new();
    for (n, (name, spec)) in pairs.iter().enumerate() {
        let at = format!("{key} (header {})", n + 1);
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            c.problem(at, "is not a valid header name (letters, digits and `-`; the name is not repeated here)");
            continue;
        };
        if OWN.contains(&name.as_str()) {
            c.problem_with(
                at,
                format!("`{name}` is a header persona-guard reads itself; choose another name (for a bearer token, use [route.oauth])"),
            );
            continue;
        }
        if out.iter().any(|h| h.name == name) {
            c.problem_with(
                at,
                format!("`{name}` is listed twice (names are compared without case)"),
            );
            continue;
        }
        let Some(value) = c.secret(at.clone(), spec) else {
            continue;
        };
        if value.expose().is_empty() {
            c.problem(at, "the value is empty: every request would carry it");
            continue;
        }
        out.push(RequiredHeader {
            name,
            value: value.expose().to_vec(),
        });
    }
    out
}

/// `[route.oauth]` of route `i`, when written.
pub(super) fn oauth(c: &mut Check, i: usize) -> Option<OAuthRule> {
    let table = format!("route[{i}].oauth");
    if !c.doc().has_table(&table) {
        return None;
    }
    let k = |name: &str| format!("{table}.{name}");
    let d = c.doc();
    let (url, issuer, audience) = (
        d.str(&k("jwks_url")).map(str::to_string),
        d.str(&k("issuer")).map(str::to_string),
        d.str(&k("audience")).map(str::to_string),
    );
    let scopes = d.list(&k("scopes")).map(<[_]>::to_vec).unwrap_or_default();
    let required = |c: &mut Check, name: &str, v: &Option<String>, what: &'static str| {
        if v.as_deref().is_none_or(str::is_empty) {
            c.problem(k(name), what);
        }
    };
    required(
        c,
        "jwks_url",
        &url,
        "is required in [route.oauth]: the issuer's JWKS URL",
    );
    required(
        c,
        "issuer",
        &issuer,
        "is required in [route.oauth]: the tokens' `iss`",
    );
    required(
        c,
        "audience",
        &audience,
        "is required in [route.oauth]: the tokens' `aud`",
    );
    if let Some(u) = &url
        && !u.is_empty()
        && let Err(why) = jwks_url(u)
    {
        c.problem(k("jwks_url"), why);
    }
    for (j, s) in scopes.iter().enumerate() {
        if s.is_empty() || s.contains(char::is_whitespace) {
            c.problem(
                format!("{}[{j}]", k("scopes")),
                "a scope is one word: not empty, no spaces",
            );
        }
    }
    let jwks_refresh = c.duration(&k("jwks_refresh"));
    if jwks_refresh < MIN_JWKS_REFRESH {
        c.problem(k("jwks_refresh"), "must be at least 1s");
    }
    Some(OAuthRule {
        jwks_url: url.unwrap_or_default(),
        issuer: issuer.unwrap_or_default(),
        audience: audience.unwrap_or_default(),
        scopes,
        jwks_refresh,
    })
}

/// `https://`, or `http://` on a loopback address, with a host.
fn jwks_url(url: &str) -> Result<(), &'static str> {
    https_or_loopback(url).map(drop)
}

/// An outgoing call's URL (a JWKS, Persona's API): `https://`, or `http://`
/// on a loopback address, with a host and no user info. Messages never
/// repeat the value.
pub(super) fn https_or_loopback(url: &str) -> Result<http::Uri, &'static str> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "is not a URL (the value is not repeated here)")?;
    let host = uri
        .host()
        .ok_or("has no host (the value is not repeated here)")?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry credentials (user info); the value is not repeated here");
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => {
            return Err("must be https:// (http:// only on a loopback address, such as 127.0.0.1)");
        }
        _ => return Err("must be an https:// URL (the value is not repeated here)"),
    }
    Ok(uri)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_url_is_https_or_loopback_http() {
        for ok in [
            "https://auth.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8000/jwks",
            "http://[::1]:8000/jwks",
            "http://localhost/jwks",
        ] {
            assert_eq!(jwks_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://auth.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://127.0.0.1/jwks",
            "https://user:pw@auth.example.com/jwks",
            "/jwks",
            "not a url",
        ] {
            assert!(jwks_url(bad).is_err(), "{bad}");
        }
    }
}
