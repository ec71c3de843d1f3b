//! cargo-fuzz target: see `fuzz/checks/config_load.rs` for what it checks.
#![no_main]

#[path = "../checks/config_load.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
