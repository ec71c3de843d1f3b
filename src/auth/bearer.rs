//! The bearer token of a request's `Authorization` header (RFC 6750 §2.1).

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// What a request's `Authorization` headers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No `Authorization` header.
    Missing,
    /// Exactly one, `Bearer <token>`.
    Token(&'a str),
    /// Several, another scheme, or a token of characters RFC 6750 does not
    /// allow.
    Malformed,
}

/// Reads the bearer token: exactly one `Authorization` header, the scheme
/// `Bearer` in any case, one or more spaces, then a `b64token` (letters,
/// digits, `-._~+/`, then any `=`), nothing after it.
pub fn parse(headers: &HeaderMap) -> Bearer<'_> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return match headers.contains_key(AUTHORIZATION) {
            true => Bearer::Malformed,
            false => Bearer::Missing,
        };
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Bearer::Malformed;
    };
    let token = rest.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || !is_b64token(token) {
        return Bearer::Malformed;
    }
    Bearer::Token(token)
}

fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests;
