//! A bearer token checked as a JWT from the route's issuer (see
//! [`super`]): signature by a key of the JWKS, time, issuer, audience,
//! scopes. The JWT and JWK work is `jsonwebtoken`'s; this file chooses what
//! is allowed and names the check that failed.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::OAuthRule;

/// The clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The algorithms a token may be signed with: asymmetric only. `none` is not
/// an algorithm `jsonwebtoken` parses, and no HMAC algorithm is listed, so a
/// token "signed" with a public key as an HMAC secret fails.
pub const ALLOWED: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// One key of a JWKS, ready to verify with.
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: the only algorithm it verifies.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// What a token must show, apart from the signature.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Scopes>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    One(String),
    Many(Vec<String>),
}

/// The token's header, read before any key: its `kid` picks the key.
pub struct Head {
    pub kid: Option<String>,
    alg: Algorithm,
}

/// Reads the token's header: `Err` names the check (a token that is not a
/// JWT, or an algorithm not in [`ALLOWED`]).
pub fn head(token: &str) -> Result<Head, &'static str> {
    let h = jsonwebtoken::decode_header(token)
        .map_err(|_| "not a JWT, or an algorithm never allowed")?;
    if !ALLOWED.contains(&h.alg) {
        return Err("algorithm not allowed");
    }
    Ok(Head {
        kid: h.kid,
        alg: h.alg,
    })
}

/// Verifies `token` (whose header is `head`) with the keys that may have
/// signed it (the one with its `kid`, or, without a `kid`, every key) and
/// checks its time, issuer, audience and scopes. `Err` names the check.
pub fn verify<'k>(
    token: &str,
    head: &Head,
    keys: impl IntoIterator<Item = &'k Key>,
    rule: &OAuthRule,
) -> Result<(), &'static str> {
    let mut validation = Validation::new(head.alg);
    validation.leeway = LEEWAY.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&rule.issuer]);
    validation.set_audience(&[&rule.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let mut failure = "no key of the JWKS has the token's kid";
    for key in keys {
        if key.alg.is_some_and(|a| a != head.alg) {
            failure = "the key's algorithm is not the token's";
            continue;
        }
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => return scopes(&data.claims, &rule.scopes),
            // Another key may have signed it (no `kid`, or a reused one).
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm
                ) =>
            {
                failure = "signature";
            }
            Err(e) => return Err(check_of(e.kind())),
        }
    }
    Err(failure)
}

/// The check a `jsonwebtoken` error stands for.
fn check_of(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired (exp)",
        ErrorKind::ImmatureSignature => "not yet valid (nbf)",
        ErrorKind::InvalidIssuer => "issuer (iss)",
        ErrorKind::InvalidAudience => "audience (aud)",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        ErrorKind::InvalidSignature => "signature",
        ErrorKind::InvalidAlgorithm => "algorithm",
        _ => "malformed token",
    }
}

fn scopes(claims: &Claims, required: &[String]) -> Result<(), &'static str> {
    let granted: Vec<&str> = match (&claims.scope, &claims.scp) {
        (Some(s), _) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        (None, Some(Scopes::One(s))) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        (None, Some(Scopes::Many(v))) => v.iter().map(String::as_str).collect(),
        (None, None) => Vec::new(),
    };
    match required.iter().all(|r| granted.contains(&r.as_str())) {
        true => Ok(()),
        false => Err("a required scope is missing"),
    }
}

/// The keys of a JWKS document that can verify a token: RSA, P-256 and
/// Ed25519 signing keys. A key of another kind (a symmetric `oct` key
/// above all: it would turn a public value into an HMAC secret), one
/// marked for encryption, or one that does not parse is left out, and its
/// position is counted in the second value for the log.
pub fn keys_of(jwks: &[u8]) -> Result<(Vec<Key>, usize), &'static str> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(jwks).map_err(|_| "not a JWKS document")?;
    let mut skipped = 0;
    let mut keys = Vec::new();
    for raw in set.keys {
        match key_of(raw) {
            Some(k) => keys.push(k),
            None => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

fn key_of(raw: serde_json::Value) -> Option<Key> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {}
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {}
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {}
        _ => return None,
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let a: Algorithm = a.to_string().parse().ok()?;
            if !ALLOWED.contains(&a) {
                return None;
            }
            Some(a)
        }
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key: DecodingKey::from_jwk(&jwk).ok()?,
    })
}

#[cfg(test)]
mod tests;
