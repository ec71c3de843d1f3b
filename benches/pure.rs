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

criterion_group!(benches, verify, normalise, extract, replay);
criterion_main!(benches);
