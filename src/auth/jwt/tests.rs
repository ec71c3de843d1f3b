//! Tokens minted here with the test keys in `tests/fixtures/jwt` (RSA, P-256,
//! Ed25519; test-only keys), checked against their JWKS.
use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

fn fixture(name: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
    std::fs::read(format!("{dir}{name}")).unwrap()
}

fn jwks(kids: &[&str]) -> Vec<u8> {
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .map(|k| serde_json::from_slice(&fixture(&format!("{k}.jwk.json"))).unwrap())
        .collect();
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

fn rule() -> OAuthRule {
    OAuthRule {
        jwks_url: "http://127.0.0.1:1/jwks".into(),
        issuer: "https://auth.example.test/".into(),
        audience: "persona-webhooks".into(),
        scopes: vec!["webhooks:write".into()],
        jwks_refresh: Duration::from_secs(3600),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> serde_json::Value {
    json!({
        "iss": "https://auth.example.test/",
        "aud": "persona-webhooks",
        "exp": now() + 300,
        "iat": now(),
        "scope": "webhooks:write other",
    })
}

fn key_for(alg: Algorithm, kid: &str) -> EncodingKey {
    let pem = fixture(&format!("{kid}.pem"));
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => unreachable!(),
    }
}

fn mint(alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, &key_for(alg, kid)).unwrap()
}

fn check(token: &str, set: &[&str]) -> Result<(), &'static str> {
    let (keys, _) = keys_of(&jwks(set)).unwrap();
    let head = head(token)?;
    let chosen = keys
        .iter()
        .filter(|k| head.kid.is_none() || k.kid == head.kid);
    verify(token, &head, chosen, &rule())
}

const ALL: [&str; 4] = ["rsa1", "rsa2", "ec1", "ed1"];

#[test]
fn every_allowed_algorithm_with_its_key_passes() {
    for (alg, kid) in [
        (Algorithm::RS256, "rsa1"),
        (Algorithm::PS256, "rsa2"),
        (Algorithm::ES256, "ec1"),
        (Algorithm::EdDSA, "ed1"),
    ] {
        assert_eq!(check(&mint(alg, kid, &claims()), &ALL), Ok(()), "{alg:?}");
    }
}

#[test]
fn each_failed_check_is_named() {
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        check(&mint(Algorithm::RS256, "rsa1", &c), &ALL)
    };
    assert_eq!(
        with(&|c| c["exp"] = json!(now() - 120)),
        Err("expired (exp)")
    );
    assert_eq!(
        with(&|c| c["nbf"] = json!(now() + 120)),
        Err("not yet valid (nbf)")
    );
    assert_eq!(
        with(&|c| c["iss"] = json!("https://evil.test/")),
        Err("issuer (iss)")
    );
    assert_eq!(
        with(&|c| c["aud"] = json!("someone-else")),
        Err("audience (aud)")
    );
    assert_eq!(
        with(&|c| c["scope"] = json!("other")),
        Err("a required scope is missing")
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        Err("a required claim (exp, iss, aud) is missing")
    );
    // Within the leeway, both ways.
    assert_eq!(with(&|c| c["exp"] = json!(now() - 10)), Ok(()));
    assert_eq!(with(&|c| c["nbf"] = json!(now() + 10)), Ok(()));
}

#[test]
fn scopes_come_from_scope_or_scp_as_a_string_or_a_list() {
    let with = |scp: serde_json::Value| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = scp;
        check(&mint(Algorithm::ES256, "ec1", &c), &ALL)
    };
    assert_eq!(with(json!("a webhooks:write")), Ok(()));
    assert_eq!(with(json!(["a", "webhooks:write"])), Ok(()));
    assert_eq!(with(json!(["a"])), Err("a required scope is missing"));
    assert_eq!(
        with(json!("webhooks:writer")),
        Err("a required scope is missing")
    );
}

#[test]
fn a_token_signed_by_a_key_not_in_the_set_fails() {
    // rsa2's token under rsa1's kid: the signature does not verify.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa1".into());
    let token = encode(&h, &claims(), &key_for(Algorithm::RS256, "rsa2")).unwrap();
    assert_eq!(check(&token, &ALL), Err("signature"));
    // Its own kid, but the set does not have it yet.
    let token = mint(Algorithm::RS256, "rsa2", &claims());
    assert_eq!(
        check(&token, &["rsa1", "ec1"]),
        Err("no key of the JWKS has the token's kid")
    );
}

#[test]
fn alg_none_and_hmac_with_the_public_key_never_pass() {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa1"})),
        b64(&claims())
    );
    assert_eq!(
        check(&none, &ALL),
        Err("not a JWT, or an algorithm never allowed")
    );
    // The key-confusion attack: HS256 "signed" with the public key's bytes.
    for kid in ALL {
        let public = fixture(&format!("{kid}.pub.pem"));
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        let token = encode(&h, &claims(), &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(check(&token, &ALL), Err("algorithm not allowed"), "{kid}");
    }
}

#[test]
fn an_rsa_token_is_not_checked_with_an_ec_key_of_the_same_kid() {
    // The EC key under the token's kid: the families differ, so it fails.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec1".into());
    let token = encode(&h, &claims(), &key_for(Algorithm::RS256, "rsa1")).unwrap();
    assert_eq!(check(&token, &ALL), Err("signature"));
}

#[test]
fn a_key_whose_alg_is_another_is_not_used() {
    let mut jwk: serde_json::Value = serde_json::from_slice(&fixture("rsa1.jwk.json")).unwrap();
    jwk["alg"] = json!("PS256");
    let set = serde_json::to_vec(&json!({ "keys": [jwk] })).unwrap();
    let (keys, _) = keys_of(&set).unwrap();
    let token = mint(Algorithm::RS256, "rsa1", &claims());
    let head = head(&token).unwrap();
    assert_eq!(
        verify(&token, &head, &keys, &rule()),
        Err("the key's algorithm is not the token's")
    );
}

#[test]
fn symmetric_encryption_and_unknown_keys_are_left_out_of_the_set() {
    let mut keys: Vec<serde_json::Value> = ALL
        .iter()
        .map(|k| serde_json::from_slice(&fixture(&format!("{k}.jwk.json"))).unwrap())
        .collect();
    keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}));
    keys.push(json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": keys[0]["n"], "e": "AQAB"}));
    keys.push(json!({"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}));
    keys.push(json!({"kty": "what", "kid": "x"}));
    keys.push(json!({"kty": "RSA", "kid": "hs", "alg": "HS256", "n": keys[0]["n"], "e": "AQAB"}));
    let set = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
    let (got, skipped) = keys_of(&set).unwrap();
    let kids: Vec<_> = got.iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, ALL);
    assert_eq!(skipped, 5);
    assert!(keys_of(b"{\"nokeys\":[]}").is_err());
    assert!(keys_of(b"<html>").is_err());
}

#[test]
fn no_kid_tries_every_key() {
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &key_for(Algorithm::ES256, "ec1"),
    )
    .unwrap();
    assert_eq!(check(&token, &ALL), Ok(()));
}
