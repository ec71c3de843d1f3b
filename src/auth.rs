//! Persona's optional request authentication, beside the signature (the
//! contract's §10): a static header token and an OAuth bearer token.
//!
//! Both are judged after the signature header's form and before the body is
//! read, and both headers are removed before a delivery is forwarded.
//!
//! - `header_token`: each header a route requires (`require_headers`) must
//!   come exactly once with exactly the configured value, compared in
//!   constant time (as SHA-256 digests, so the length leaks nothing either);
//!   anything else is 401 `invalid_header_token`.
//! - `bearer`: exactly one `Authorization` header of the form
//!   `Bearer <token>` (scheme in any case, RFC 6750's token characters);
//!   none is 401 `missing_token`, anything else 401 `invalid_token`.
//! - `jwt`: the token is a JWT signed by a key of the route's JWKS with
//!   RS256, PS256, ES256 or EdDSA (never `none`, never an HMAC algorithm: a
//!   token "signed" with the public key as an HMAC secret fails), `exp` in
//!   the future and any `nbf` in the past within [`jwt::LEEWAY`], the
//!   route's issuer and audience, and every listed scope (`scope`, space
//!   separated, or `scp`, a string or a list).
//! - `jwks`: the key set, fetched at start (readiness waits for it),
//!   refreshed every `jwks_refresh` and on an unknown `kid` at most once a
//!   minute; a failed fetch keeps the last good set and is counted.
//!
//! Nothing here logs or returns a token, a header value or a key: a refusal
//! carries the name of the check that failed, for the log line.

pub mod bearer;
pub mod header_token;
pub mod jwks;
pub mod jwt;
pub mod keyring;

use std::time::Duration;

use http::HeaderName;

/// A route's OAuth requirement (`[route.oauth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthRule {
    /// Where the issuer publishes its keys: https, or http on a loopback
    /// address.
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// Every one must be granted.
    pub scopes: Vec<String>,
    pub jwks_refresh: Duration,
}

/// A header a route requires, with the value it must carry (a secret: it is
/// never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct RequiredHeader {
    pub name: HeaderName,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for RequiredHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequiredHeader")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Why a request was refused: the outcome and the check that failed (for
/// the log line; never the token or the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401 `invalid_header_token`.
    HeaderToken(&'static str),
    /// 401 `missing_token`.
    MissingToken,
    /// 401 `invalid_token`.
    InvalidToken(&'static str),
}

impl Refusal {
    /// The check that failed, as the log line names it.
    pub fn check(&self) -> &'static str {
        match self {
            Refusal::HeaderToken(c) | Refusal::InvalidToken(c) => c,
            Refusal::MissingToken => "no bearer token",
        }
    }
}

/// What a route requires beside the signature, ready to check.
#[derive(Default, Clone)]
pub struct RouteAuth {
    pub headers: Vec<RequiredHeader>,
    pub oauth: Option<(OAuthRule, std::sync::Arc<jwks::Jwks>)>,
}

impl RouteAuth {
    /// Whether the route requires anything beside the signature.
    pub fn is_required(&self) -> bool {
        !self.headers.is_empty() || self.oauth.is_some()
    }

    /// The static headers, then the bearer token (the contract's order).
    pub async fn check(&self, headers: &http::HeaderMap) -> Result<(), Refusal> {
        header_token::check(headers, &self.headers).map_err(Refusal::HeaderToken)?;
        match &self.oauth {
            None => Ok(()),
            Some((rule, keys)) => oauth(headers, rule, keys).await,
        }
    }

    /// Removes what was checked, so the application never sees a token:
    /// every copy of each required header, and `Authorization` on an OAuth
    /// route.
    pub fn strip(&self, headers: &mut http::HeaderMap) {
        for h in &self.headers {
            headers.remove(&h.name);
        }
        if self.oauth.is_some() {
            headers.remove(http::header::AUTHORIZATION);
        }
    }
}

async fn oauth(
    headers: &http::HeaderMap,
    rule: &OAuthRule,
    keys: &jwks::Jwks,
) -> Result<(), Refusal> {
    let token = match bearer::parse(headers) {
        bearer::Bearer::Missing => return Err(Refusal::MissingToken),
        bearer::Bearer::Malformed => {
            return Err(Refusal::InvalidToken(
                "Authorization is not one `Bearer <token>` header",
            ));
        }
        bearer::Bearer::Token(t) => t,
    };
    let head = jwt::head(token).map_err(Refusal::InvalidToken)?;
    let set = keys.current().ok_or(Refusal::InvalidToken(
        "the issuer's keys were never fetched",
    ))?;
    let known = |set: &jwks::Set| {
        head.kid
            .as_deref()
            .is_none_or(|kid| set.keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
    };
    let set = match known(&set) || !keys.refresh_for_unknown_kid().await {
        true => set,
        false => keys.current().unwrap_or(set),
    };
    let chosen = set
        .keys
        .iter()
        .filter(|k| head.kid.is_none() || k.kid == head.kid);
    jwt::verify(token, &head, chosen, rule).map_err(Refusal::InvalidToken)
}
