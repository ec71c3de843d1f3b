//! Criterion micro-benchmarks of the per-request pure parts:
//! `cargo bench --bench pure`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use persona_guard::replay::Claim;
use persona_guard::replay::memory::{MemoryStore, SystemClock, key};
use persona_guard::{event, path, signature};

const SECRET: &[u8] = b"wbhsec_bench_secret";

fn body(size: usize) -> Vec<u8> {
    let head = r#"{"data":{"type":"event","id":"evt_bench_1","attributes":{"name":"inquiry.approved","created-at":"2026-11-26T10:00:00.000Z","payload":{"notes":""#;
    let tail = r#""}}}}"#;
    let mut b = head.as_bytes().to_vec();
    b.resize(size.saturating_sub(tail.len()).max(head.len()), b'x');
    b.extend_from_slice(tail.as_bytes());
    b
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_and_verify");
    for kib in [1usize, 4, 64, 900] {
        let b = body(kib * 1024);
        let header = signature::sign(SECRET, 1_700_000_000, &b);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{kib}KiB")),
            &b,
            |bench, b| {
                bench.iter(|| {
                    let parsed = signature::parse(black_box(header.as_bytes())).unwrap();
                    signature::verify(&parsed, &[SECRET], black_box(b), 1_700_000_000, 300)
                })
            },
        );
    }
    g.finish();
}

fn normalise(c: &mut Criterion) {
    let mut g = c.benchmark_group("path_normalize");
    for p in [
        "/webhooks/persona",
        "/api/v1/users/12345/profile?x=1",
        "//WEBHOOKS/./x/../persona%2Fsub/",
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(p), p, |bench, p| {
            bench.iter(|| path::normalize(black_box(p.as_bytes())).unwrap())
        });
    }
    g.finish();
}

fn extract(c: &mut Criterion) {
    let mut g = c.benchmark_group("event_extract");
    for kib in [1usize, 4, 64] {
        let b = body(kib * 1024);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{kib}KiB")),
            &b,
            |bench, b| bench.iter(|| event::parse(black_box(b)).unwrap().id.len()),
        );
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let store = MemoryStore::new(1_000_000, Arc::new(SystemClock::default()));
    let mut n = 0u64;
    c.bench_function("replay_claim_commit", |bench| {
        bench.iter(|| {
            n += 1;
            let k = key(b"/webhooks/persona", &format!("evt_{n}"));
            match store.claim(&k, Duration::from_secs(60)) {
                Claim::Claimed(_) => store.commit(&k, Duration::from_secs(900)),
                other => panic!("{other:?}"),
            }
        })
    });
}

/// What `[route.oauth]` adds to a delivery: the bearer header read, the JWT's
/// header, and its signature and claims checked with the JWKS key, per
/// algorithm (the test keys of `tests/fixtures/jwt`).
fn oauth(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use persona_guard::auth::{OAuthRule, bearer, jwt};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
    let read = |f: &str| std::fs::read(format!("{dir}{f}")).unwrap();
    let rule = OAuthRule {
        jwks_url: "http://127.0.0.1:1/jwks".into(),
        issuer: "https://auth.bench/".into(),
        audience: "persona-webhooks".into(),
        scopes: vec!["webhooks:deliver".into()],
        jwks_refresh: Duration::from_secs(3600),
    };
    let now = persona_guard::clock::unix_now().as_secs();
    let claims = serde_json::json!({
        "iss": rule.issuer, "aud": rule.audience, "exp": now + 3600, "scope": "webhooks:deliver",
    });
    let mut g = c.benchmark_group("oauth_token_check");
    for (alg, kid) in [
        (Algorithm::RS256, "rsa1"),
        (Algorithm::ES256, "ec1"),
        (Algorithm::EdDSA, "ed1"),
    ] {
        let pem = read(&format!("{kid}.pem"));
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem).unwrap(),
        };
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let token = encode(&h, &claims, &key).unwrap();
        let jwk: serde_json::Value =
            serde_json::from_slice(&read(&format!("{kid}.jwk.json"))).unwrap();
        let set = serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).unwrap();
        let (keys, _) = jwt::keys_of(&set).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        g.bench_function(format!("{alg:?}"), |bench| {
            bench.iter(|| {
                let bearer::Bearer::Token(t) = bearer::parse(black_box(&headers)) else {
                    panic!("no token")
                };
                let head = jwt::head(t).unwrap();
                jwt::verify(t, &head, &keys, &rule).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, verify, normalise, extract, replay, oauth);
criterion_main!(benches);
