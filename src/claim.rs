//! What a replay-store claim answers: shared by the stores (`replay` and
//! `redis_store`), which otherwise need nothing of each other.

use std::time::Duration;

/// The outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the delivery; settle it with `commit` or `release`.
    Claimed(u64),
    /// Already delivered within `ttl`.
    Duplicate,
    /// Another request is delivering it; its mark expires in `retry_after` at most.
    InFlight { retry_after: Duration },
}
