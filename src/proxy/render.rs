//! The one place a response's `Cache-Status` (RFC 9211) is rendered and its
//! outcome labelled for metrics and the access log.

use http::StatusCode;
use http::header::HeaderValue;

use crate::cache::policy::PassReason;
use crate::metrics::CacheStatusLabel;

/// How corral handled a request, as reported in `Cache-Status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served fresh from the hot cache.
    Hit,
    /// This request's fetch went to the origin (it led the flight).
    Miss,
    /// This request waited on another request's fetch and got its answer.
    Coalesced,
    /// A stored response could not be reused as it was (stale, or the client
    /// asked for validation), so the origin was asked: conditionally when it
    /// has a validator. Counted as a miss, or as coalesced for followers.
    Revalidated {
        /// Whether this request waited on another request's revalidation.
        collapsed: bool,
    },
    /// Served from the hot cache past its freshness, without the origin.
    Stale(StaleReason),
    /// Sent to the origin without caching or coalescing.
    Pass(PassReason),
    /// Answered with an error by corral itself.
    Error,
}

impl CacheOutcome {
    /// The bounded metric label this outcome counts under.
    pub fn status_label(self) -> CacheStatusLabel {
        match self {
            CacheOutcome::Hit => CacheStatusLabel::Hit,
            CacheOutcome::Miss | CacheOutcome::Revalidated { collapsed: false } => {
                CacheStatusLabel::Miss
            }
            CacheOutcome::Coalesced | CacheOutcome::Revalidated { collapsed: true } => {
                CacheStatusLabel::Coalesced
            }
            CacheOutcome::Stale(_) => CacheStatusLabel::Stale,
            CacheOutcome::Pass(_) => CacheStatusLabel::Pass,
            CacheOutcome::Error => CacheStatusLabel::Error,
        }
    }

    /// The metric label's text: hit, miss, coalesced, stale, pass or error.
    pub fn label(self) -> &'static str {
        self.status_label().as_str()
    }
}

/// Why a stale entry was served instead of an answer from the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The origin's circuit breaker is open.
    CircuitOpen,
    /// The origin asked for a pause with `Retry-After` that has not expired.
    RetryAfter,
    /// The origin is at its concurrency limit and its queue is full or too slow.
    Overloaded,
    /// Within its stale-while-revalidate window: one background request is
    /// refreshing it (RFC 5861 §3).
    WhileRevalidate,
    /// Within its stale-if-error window, and the origin failed, timed out or
    /// answered 5xx (RFC 5861 §4).
    IfError,
}

impl StaleReason {
    /// Stable lower-case label, used as the `Cache-Status` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::CircuitOpen => "stale-circuit-open",
            StaleReason::RetryAfter => "stale-retry-after",
            StaleReason::Overloaded => "stale-overloaded",
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
        }
    }
}

/// Builds the RFC 9211 `Cache-Status` value for one response.
///
/// `hit` carries the remaining freshness as `ttl`; a leader's miss says `stored`
/// when it was stored; a follower says `collapsed`; a revalidation says
/// `fwd=stale` with the origin's status (304 when it confirmed the stored
/// response); a pass says `fwd=bypass` with the reason in `detail`; a stale
/// answer is a `hit` whose `detail` says why it was served stale.
pub fn cache_status_value(
    outcome: CacheOutcome,
    fwd_status: Option<StatusCode>,
    stored: bool,
    ttl_secs: Option<u64>,
    detail: Option<&str>,
) -> HeaderValue {
    let mut value = String::with_capacity(64);
    value.push_str("corral");
    match outcome {
        CacheOutcome::Hit => value.push_str("; hit"),
        CacheOutcome::Miss => value.push_str("; fwd=miss"),
        CacheOutcome::Coalesced => value.push_str("; fwd=miss; collapsed"),
        CacheOutcome::Revalidated { collapsed } => {
            value.push_str("; fwd=stale");
            if collapsed {
                value.push_str("; collapsed");
            }
        }
        CacheOutcome::Stale(reason) => {
            value.push_str("; hit; detail=");
            value.push_str(reason.as_str());
        }
        CacheOutcome::Pass(reason) => {
            value.push_str("; fwd=bypass; detail=");
            value.push_str(reason.as_str());
        }
        CacheOutcome::Error => {}
    }
    if let Some(status) = fwd_status {
        value.push_str("; fwd-status=");
        value.push_str(status.as_str());
    }
    if stored {
        value.push_str("; stored");
    }
    if let Some(ttl) = ttl_secs {
        value.push_str("; ttl=");
        value.push_str(itoa::Buffer::new().format(ttl));
    }
    if let Some(detail) = detail {
        value.push_str("; detail=");
        value.push_str(detail);
    }
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("corral"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_distinguishes_leader_follower_and_hit() {
        let miss = cache_status_value(CacheOutcome::Miss, Some(StatusCode::OK), true, None, None);
        assert_eq!(miss, "corral; fwd=miss; fwd-status=200; stored");
        let follower = cache_status_value(
            CacheOutcome::Coalesced,
            Some(StatusCode::OK),
            false,
            None,
            None,
        );
        assert_eq!(follower, "corral; fwd=miss; collapsed; fwd-status=200");
        let hit = cache_status_value(CacheOutcome::Hit, None, false, Some(42), None);
        assert_eq!(hit, "corral; hit; ttl=42");
        let pass = cache_status_value(
            CacheOutcome::Pass(PassReason::Method),
            None,
            false,
            None,
            None,
        );
        assert_eq!(pass, "corral; fwd=bypass; detail=method");
        let stale = cache_status_value(
            CacheOutcome::Stale(StaleReason::CircuitOpen),
            None,
            false,
            None,
            None,
        );
        assert_eq!(stale, "corral; hit; detail=stale-circuit-open");
    }

    #[test]
    fn cache_status_names_revalidations_and_stale_reasons() {
        let revalidated = cache_status_value(
            CacheOutcome::Revalidated { collapsed: false },
            Some(StatusCode::NOT_MODIFIED),
            true,
            None,
            None,
        );
        assert_eq!(revalidated, "corral; fwd=stale; fwd-status=304; stored");
        let follower = cache_status_value(
            CacheOutcome::Revalidated { collapsed: true },
            Some(StatusCode::OK),
            false,
            None,
            None,
        );
        assert_eq!(follower, "corral; fwd=stale; collapsed; fwd-status=200");
        for (reason, text) in [
            (
                StaleReason::WhileRevalidate,
                "corral; hit; detail=stale-while-revalidate",
            ),
            (StaleReason::IfError, "corral; hit; detail=stale-if-error"),
        ] {
            let value = cache_status_value(CacheOutcome::Stale(reason), None, false, None, None);
            assert_eq!(value, text);
            assert_eq!(CacheOutcome::Stale(reason).label(), "stale");
        }
        assert_eq!(
            CacheOutcome::Revalidated { collapsed: false }.label(),
            "miss"
        );
        assert_eq!(
            CacheOutcome::Revalidated { collapsed: true }.label(),
            "coalesced"
        );
    }
}
