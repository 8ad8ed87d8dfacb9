//! How a request ended ([`Outcome`]) and why an upstream attempt did not
//! give a good answer ([`Reason`]), in the words the degradation headers,
//! metrics, status and logs all use.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Reason {
    /// The upstream answered 401/403 to the token.
    TokenRejected = 1,
    /// Every token is past its expiry.
    TokenExpired = 2,
    /// The upstream answered 5xx.
    Upstream5xx = 3,
    /// The upstream answered 429.
    RateLimited = 4,
    /// The upstream did not answer within the read timeout.
    UpstreamTimeout = 5,
    /// The connection was refused, reset, or could not be made.
    UpstreamUnreachable = 6,
    /// No token has a value: every source failed (the identity provider or
    /// secret store is down).
    TokenUnavailable = 7,
}

/// What an upstream can give a request now (`/status`, `/readyz`, the
/// webhook, `graceway status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamState {
    /// Fresh answers.
    Healthy,
    /// Answers from copies (or some 503s) for a [`Reason`].
    Degraded,
    /// Nothing but errors: no usable token and no copy, or the upstream is
    /// unreachable and nothing is stored.
    Down,
}

impl UpstreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Healthy => "healthy",
            UpstreamState::Degraded => "degraded",
            UpstreamState::Down => "down",
        }
    }
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::TokenRejected,
        Reason::TokenExpired,
        Reason::Upstream5xx,
        Reason::RateLimited,
        Reason::UpstreamTimeout,
        Reason::UpstreamUnreachable,
        Reason::TokenUnavailable,
    ];

    /// The word used in `X-Graceway-Degraded`, `Cache-Status` `detail=`,
    /// metric labels and the JSON error body.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenRejected => "token-rejected",
            Reason::TokenExpired => "token-expired",
            Reason::Upstream5xx => "upstream-5xx",
            Reason::RateLimited => "rate-limited",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::UpstreamUnreachable => "upstream-unreachable",
            Reason::TokenUnavailable => "token-unavailable",
        }
    }

    /// `Cache-Status` of a stale answer without the upstream's status
    /// (RFC 9211), one constant per reason.
    pub fn stale_cache_status(self) -> &'static str {
        match self {
            Reason::TokenRejected => "graceway; fwd=stale; detail=token-rejected",
            Reason::TokenExpired => "graceway; fwd=stale; detail=token-expired",
            Reason::Upstream5xx => "graceway; fwd=stale; detail=upstream-5xx",
            Reason::RateLimited => "graceway; fwd=stale; detail=rate-limited",
            Reason::UpstreamTimeout => "graceway; fwd=stale; detail=upstream-timeout",
            Reason::UpstreamUnreachable => "graceway; fwd=stale; detail=upstream-unreachable",
            Reason::TokenUnavailable => "graceway; fwd=stale; detail=token-unavailable",
        }
    }

    pub fn from_u8(v: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u8 == v)
    }

    /// The reason for an upstream status code, when it is a failure.
    pub fn from_status(status: u16) -> Option<Reason> {
        match status {
            401 | 403 => Some(Reason::TokenRejected),
            429 => Some(Reason::RateLimited),
            500..=599 => Some(Reason::Upstream5xx),
            _ => None,
        }
    }
}

/// Why a copy answered a request with nothing wrong (`Cache-Status: graceway;
/// hit`, `graceway_cache_hits_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// Within the vendor's freshness lifetime (`upstreams[].cache.fresh`).
    Fresh,
    /// Within `stale-while-revalidate`: a background refresh renews it.
    Revalidating,
    /// Another request's fetch of the same key, waited for
    /// (`cache.coalesce`).
    Coalesced,
}

impl Hit {
    pub const ALL: [Hit; 3] = [Hit::Fresh, Hit::Revalidating, Hit::Coalesced];

    pub fn as_str(self) -> &'static str {
        match self {
            Hit::Fresh => "fresh",
            Hit::Revalidating => "stale-while-revalidate",
            Hit::Coalesced => "coalesced",
        }
    }
}

/// How the request ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Not decided yet, or answered by graceway before routing (404, 431).
    #[default]
    Unrouted,
    /// The upstream's own answer.
    Fresh,
    /// A last-good copy, for this reason.
    Stale(Reason),
    /// A copy answered before any vendor call, nothing being wrong.
    Hit(Hit),
    /// graceway's 503 (or the upstream's error when not in `stale.on`).
    Error(Option<Reason>),
    /// The client's own doing: it went away, stalled, or sent too much.
    /// Never counted against the upstream or its tokens.
    Client(ClientReason),
}

/// Why graceway refused or ended a request on the client's side: the
/// `reason` of the JSON error, the access log and
/// `graceway_client_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientReason {
    BadTarget,
    BadHost,
    BadFraming,
    HeaderTooLarge,
    BodyTooLarge,
    MethodNotAllowed,
    NoRoute,
    HeaderTimeout,
    BodyTimeout,
    ClientClosed,
    InvalidRequest,
    ShuttingDown,
}

impl ClientReason {
    pub const ALL: [ClientReason; 12] = [
        ClientReason::BadTarget,
        ClientReason::BadHost,
        ClientReason::BadFraming,
        ClientReason::HeaderTooLarge,
        ClientReason::BodyTooLarge,
        ClientReason::MethodNotAllowed,
        ClientReason::NoRoute,
        ClientReason::HeaderTimeout,
        ClientReason::BodyTimeout,
        ClientReason::ClientClosed,
        ClientReason::InvalidRequest,
        ClientReason::ShuttingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientReason::BadTarget => "bad-target",
            ClientReason::BadHost => "bad-host",
            ClientReason::BadFraming => "bad-framing",
            ClientReason::HeaderTooLarge => "header-too-large",
            ClientReason::BodyTooLarge => "body-too-large",
            ClientReason::MethodNotAllowed => "method-not-allowed",
            ClientReason::NoRoute => "no-route",
            ClientReason::HeaderTimeout => "header-timeout",
            ClientReason::BodyTimeout => "body-timeout",
            ClientReason::ClientClosed => "client-closed",
            ClientReason::InvalidRequest => "invalid-request",
            ClientReason::ShuttingDown => "shutting-down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_cache_status_names_each_reason() {
        for r in Reason::ALL {
            assert_eq!(
                r.stale_cache_status(),
                format!("graceway; fwd=stale; detail={}", r.as_str())
            );
        }
    }
}
