//! The one clock helper: wall-clock time as Unix seconds, the form every
//! atomic timestamp in graceway is kept in (a relaxed `AtomicU64` is
//! cheaper to share between threads than a `SystemTime` behind a lock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

/// Seconds since the Unix epoch at `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` seconds after the Unix epoch.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}
