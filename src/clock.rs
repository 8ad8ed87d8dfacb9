//! The one clock helper: wall-clock time as Unix seconds, the form every
//! atomic timestamp in graceway is kept in (a relaxed `AtomicU64` is
//! cheaper to share between threads than a `SystemTime` behind a lock),
//! and the one backoff rule (token sources, probes, the webhook, Redis).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch at `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` seconds after the Unix epoch.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Exponential backoff: `first` after the first failure, doubling with each
/// further one, never more than `max`.
pub fn backoff(first: Duration, failures: u32, max: Duration) -> Duration {
    first
        .checked_mul(1u32 << failures.saturating_sub(1).min(20))
        .map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let s = Duration::from_secs;
        let b = |n| backoff(s(2), n, s(300));
        assert_eq!(
            [b(0), b(1), b(2), b(3), b(8), b(9), b(40)],
            [s(2), s(2), s(4), s(8), s(256), s(300), s(300)]
        );
    }
}

/// Serialises a `SystemTime` as an RFC 3339 UTC timestamp (seconds).
pub mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }
}
