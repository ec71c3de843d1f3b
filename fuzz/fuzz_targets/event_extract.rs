//! cargo-fuzz target: see `fuzz/checks/event_extract.rs` for what it checks.
#![no_main]

#[path = "../checks/event_extract.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
