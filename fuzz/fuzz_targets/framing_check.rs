//! cargo-fuzz target: see `fuzz/checks/framing_check.rs` for what it checks.
#![no_main]

#[path = "../checks/framing_check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
