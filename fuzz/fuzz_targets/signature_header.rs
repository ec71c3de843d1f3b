//! `Persona-Signature` parsing and verification on arbitrary header bytes and
//! bodies: no panic, bounded work (at most MAX_SETS x secrets HMACs).
#![no_main]
use libfuzzer_sys::fuzz_target;
use persona_guard::signature;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    if let Ok(parsed) = signature::parse(header) {
        assert!(parsed.sets.len() <= signature::MAX_SETS);
        let total: usize = parsed.sets.iter().map(|s| s.signatures.len()).sum();
        assert!(total <= signature::MAX_SIGNATURES);
        let _ = signature::verify(&parsed, &[&b"wbhsec_fuzz"[..], &b"second"[..]], body, 1_700_000_000, 300);
    }
});
