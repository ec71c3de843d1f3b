//! Black-box end-to-end tests of the `persona-guard` binary (see `docs/behaviour.md`).
//!
//! Each test starts its own recording upstream and its own proxy process on
//! free ports, so tests are independent and run in parallel.

mod cli;
mod common;
mod framing;
mod hostile;
mod operations;
mod ops;
mod passthrough;
mod paths;
mod redis;
mod routers;
mod soak;
mod tls;
mod webhook;
