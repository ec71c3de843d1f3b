//! `Persona-Signature` parsing and verification on arbitrary header bytes and
//! bodies: no panic, bounded work (at most MAX_SETS x secrets HMACs).
//!
//! Shared by the cargo-fuzz target of the same name and by the ordinary
//! test `tests/fuzz_corpus.rs`, which runs it over the committed corpus.

use persona_guard::signature;

pub fn check(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    if let Ok(parsed) = signature::parse(header) {
        assert!(parsed.sets.len() <= signature::MAX_SETS);
        let total: usize = parsed.sets.iter().map(|s| s.signatures.len()).sum();
        assert!(total <= signature::MAX_SIGNATURES);
        let _ = signature::verify(
            &parsed,
            &[&b"wbhsec_fuzz"[..], &b"second"[..]],
            body,
            1_700_000_000,
            300,
        );
    }
}
