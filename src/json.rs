//! Small JSON helpers shared by the admin endpoints and error bodies.

/// Serialises a `SystemTime` as an RFC 3339 UTC timestamp (seconds).
pub mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }
}

/// `{"error": .., "upstream": .., "reason": ..}`, the body of every error
/// graceway answers itself. Values are escaped by serde_json.
pub fn error_body(error: &str, upstream: Option<&str>, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error": error,
        "upstream": upstream,
        "reason": reason,
    }))
    .unwrap_or_default()
}
