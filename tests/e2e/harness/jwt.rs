//! Tokens for the OAuth tests, minted with the test-only keys in
//! `tests/fixtures/jwt` (RSA ×2, P-256, Ed25519), and their JWKS documents.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://auth.e2e.test/";
pub const AUDIENCE: &str = "persona-webhooks";
pub const SCOPE: &str = "webhooks:deliver";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A JWKS document holding the public keys `kids`.
pub fn jwks(kids: &[&str]) -> Vec<u8> {
    let keys: Vec<Value> = kids
        .iter()
        .map(|k| serde_json::from_slice(&fixture(&format!("{k}.jwk.json"))).unwrap())
        .collect();
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass: the issuer, the audience, the scope, 5 minutes left.
pub fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "persona",
        "iat": unix_now(),
        "exp": unix_now() + 300,
        "scope": format!("other {SCOPE}"),
    })
}

/// Claims that pass, edited by `f`.
pub fn claims_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = good_claims();
    f(&mut c);
    c
}

pub fn now_plus(seconds: i64) -> Value {
    json!(unix_now() + seconds)
}

/// The private key `kid` for `alg`.
fn signing_key(alg: Algorithm, kid: &str) -> EncodingKey {
    let pem = fixture(&format!("{kid}.pem"));
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

/// A token signed by key `kid` with `alg`, carrying `kid` in its header.
pub fn mint(alg: Algorithm, kid: &str, claims: &Value) -> String {
    mint_as(alg, kid, kid, claims)
}

/// A token signed by key `key` whose header names `kid`.
pub fn mint_as(alg: Algorithm, key: &str, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, &signing_key(alg, key)).unwrap()
}

/// The key-confusion attack: HS256 "signed" with the public key's PEM bytes.
pub fn hs256_with_public_key(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    let public = fixture(&format!("{kid}.pub.pem"));
    encode(&h, claims, &EncodingKey::from_secret(&public)).unwrap()
}

/// An unsigned token: `alg: none`.
pub fn alg_none(kid: &str, claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        b64(claims)
    )
}
