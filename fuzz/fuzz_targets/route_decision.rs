//! cargo-fuzz target: see `fuzz/checks/route_decision.rs` for what it checks.
#![no_main]

#[path = "../checks/route_decision.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
