//! The one place where a failure becomes an HTTP response, and is logged.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode, header};

use super::body::ProxyBody;
use super::render::{Answer, CacheOutcome, CacheStatus};
use crate::origin::OriginError;

/// Why corral answered a request itself instead of relaying an origin answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The origin failed (this request's fetch, or the leader's it waited on),
    /// or was not contacted because it is being protected (503 with `Retry-After`).
    #[error(transparent)]
    Origin(Arc<OriginError>),
    /// The request waited on another request's fetch longer than `lock_timeout`.
    #[error("timed out waiting for the in-flight fetch of this key")]
    LockTimeout,
    /// The client sent `Cache-Control: only-if-cached` and nothing stored
    /// could answer it (RFC 9111 §5.2.1.7): 504, the origin untouched.
    #[error("only-if-cached and nothing usable is stored")]
    NotCached,
    /// The fetch task ended without an answer (it panicked), repeatedly.
    #[error("the fetch for this key ended without an answer")]
    FetchLost,
    /// The request cannot be proxied as sent.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// CONNECT: corral never opens tunnels.
    #[error("CONNECT is not proxied")]
    ConnectRefused,
    /// An absolute-form request target named a host corral does not serve.
    #[error("request target names a host this proxy does not serve")]
    MisdirectedRequest,
    /// The request head is larger than `server.max_header_size`.
    #[error("request head of about {size} bytes exceeds the limit of {limit}")]
    HeadersTooLarge {
        /// Bytes in the request line and headers.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The request body is, or grew, larger than `server.max_request_body`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
}

impl ProxyError {
    /// The status a client sees for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Origin(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Origin(e) if e.is_refusal() => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Origin(_) | ProxyError::FetchLost => StatusCode::BAD_GATEWAY,
            ProxyError::LockTimeout | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// How long the client should wait before trying again, when corral knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::Origin(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Whether the connection closes after this answer: the request was
    /// malformed or oversized, so its body may be unread or its framing in
    /// doubt, and nothing more from that client is trusted (HTTP/1; an HTTP/2
    /// server ignores the field, and the stream alone ends).
    fn ends_the_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::BodyTooLarge { .. }
        )
    }

    /// Short, stable detail for `Cache-Status` (never internal error text).
    fn detail(&self) -> &'static str {
        match self {
            ProxyError::Origin(e) => e.label(),
            ProxyError::LockTimeout => "lock-timeout",
            ProxyError::NotCached => "only-if-cached",
            ProxyError::FetchLost => "fetch-lost",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::ConnectRefused => "method-not-allowed",
            ProxyError::MisdirectedRequest => "misdirected",
            ProxyError::HeadersTooLarge { .. } => "headers-too-large",
            ProxyError::BodyTooLarge { .. } => "body-too-large",
        }
    }

    /// Logs the failure once and renders it for the client. `outcome` says how
    /// the request got here (a leader's miss, a follower's wait, a pass); the
    /// answer counts as `error`.
    pub fn into_answer(self, outcome: CacheOutcome, path: &str) -> Answer {
        let status = self.status();
        match &self {
            ProxyError::BadRequest(_)
            | ProxyError::NotCached
            | ProxyError::ConnectRefused
            | ProxyError::MisdirectedRequest
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::BodyTooLarge { .. } => {
                tracing::debug!(path, error = %self, "refused request")
            }
            // Counted in corral_shed_total; breaker changes are logged where they happen.
            ProxyError::Origin(e) if e.is_refusal() => {
                tracing::debug!(path, cache_status = outcome.label(), error = %self, "answering without the origin")
            }
            _ => {
                tracing::warn!(path, cache_status = outcome.label(), error = %self, "answering with an error")
            }
        }
        let reason = status.canonical_reason().unwrap_or("error");
        let mut response =
            Response::new(ProxyBody::full(format!("{} {reason}\n", status.as_u16())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        if let Some(wait) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, retry_after_value(wait));
        }
        if self.ends_the_connection() {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if let ProxyError::ConnectRefused = self {
            // A 405 must say what is allowed: every method but CONNECT is relayed.
            headers.insert(
                header::ALLOW,
                header::HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
            );
        }
        Answer::new(response, CacheStatus::failure(outcome, self.detail()))
    }
}

/// `Retry-After` in whole seconds, rounded up, and at least 1 (a 0 would
/// invite an immediate retry into the same refusal).
fn retry_after_value(wait: Duration) -> header::HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    header::HeaderValue::from(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{OriginError, Refusal, TimeLimit};

    fn origin(error: OriginError) -> ProxyError {
        ProxyError::Origin(Arc::new(error))
    }

    /// The `Retry-After` a leader's client gets for `error`, with its status
    /// and `Cache-Status` checked.
    #[track_caller]
    fn retry_after(error: OriginError, status: StatusCode, cache_status: &str) -> Option<String> {
        let error = origin(error);
        assert_eq!(error.status(), status);
        let response = error.into_answer(CacheOutcome::Miss, "/p").response;
        let headers = response.headers();
        assert_eq!(headers["cache-status"], cache_status);
        headers
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn refusals_are_503_with_retry_after_in_whole_seconds() {
        let refused = OriginError::Refused {
            reason: Refusal::CircuitOpen,
            retry_after: Duration::from_millis(2_100),
        };
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let wait = retry_after(
            refused,
            unavailable,
            "corral; fwd=miss; detail=circuit_open",
        );
        assert_eq!(wait.as_deref(), Some("3"));
        let shed = OriginError::Refused {
            reason: Refusal::QueueFull,
            retry_after: Duration::ZERO,
        };
        let wait = retry_after(shed, unavailable, "corral; fwd=miss; detail=queue_full");
        assert_eq!(wait.as_deref(), Some("1"));
    }

    #[test]
    fn timeouts_are_504_and_carry_no_retry_after() {
        let timed_out = OriginError::TimedOut {
            limit: TimeLimit::FirstByte,
            after: Duration::from_secs(5),
        };
        let cache_status = "corral; fwd=miss; detail=first_byte_timeout";
        let wait = retry_after(timed_out, StatusCode::GATEWAY_TIMEOUT, cache_status);
        assert_eq!(wait, None);
    }
}
