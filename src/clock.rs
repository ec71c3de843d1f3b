//! The wall clock, read in one place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time since the Unix epoch (zero for a clock set before it).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
