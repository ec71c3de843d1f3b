//! Every cargo-fuzz target's check, run as an ordinary test over its corpus:
//! the committed seeds in `fuzz/seeds/<target>/` and, when present, the local
//! corpus a longer `scripts/fuzz.sh` run grew in `fuzz/corpus/<target>/`.
//! The checks live in `fuzz/checks/`, shared with the fuzz targets, so what CI
//! asserts on every input is exactly what libFuzzer asserts.

use std::path::PathBuf;

#[path = "../fuzz/checks/config_load.rs"]
mod config_load;
#[path = "../fuzz/checks/event_extract.rs"]
mod event_extract;
#[path = "../fuzz/checks/framing_check.rs"]
mod framing_check;
#[path = "../fuzz/checks/route_decision.rs"]
mod route_decision;
#[path = "../fuzz/checks/signature_header.rs"]
mod signature_header;

/// The inputs of one target; at least its seeds.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                inputs.push((e.path(), bytes));
            }
        }
    }
    assert!(
        inputs.len() >= 2,
        "{target}: no corpus found under fuzz/seeds/{target}"
    );
    inputs
}

fn run(target: &str, check: fn(&[u8])) {
    for (path, input) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(
            outcome.is_ok(),
            "{target}: the check fails on {}",
            path.display()
        );
    }
}

#[test]
fn signature_header_corpus() {
    run("signature_header", signature_header::check);
}

#[test]
fn route_decision_corpus() {
    run("route_decision", route_decision::check);
}

#[test]
fn framing_check_corpus() {
    run("framing_check", framing_check::check);
}

#[test]
fn event_extract_corpus() {
    run("event_extract", event_extract::check);
}

#[test]
fn config_load_corpus() {
    run("config_load", config_load::check);
}
