//! The one place where a failure becomes an HTTP response, and is logged.

use std::sync::Arc;

use http::{Response, StatusCode, header};

use super::body::ProxyBody;
use crate::http::{CACHE_STATUS, CacheOutcome, cache_status_value};
use crate::origin::OriginError;

/// Why corral answered a request itself instead of relaying an origin answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The origin failed (this request's fetch, or the leader's it waited on).
    #[error(transparent)]
    Origin(Arc<OriginError>),
    /// The request waited on another request's fetch longer than `lock_timeout`.
    #[error("timed out waiting for the in-flight fetch of this key")]
    LockTimeout,
    /// The fetch task ended without an answer (it panicked), repeatedly.
    #[error("the fetch for this key ended without an answer")]
    FetchLost,
    /// The request cannot be proxied as sent.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl ProxyError {
    /// The status a client sees for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Origin(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Origin(_) | ProxyError::FetchLost => StatusCode::BAD_GATEWAY,
            ProxyError::LockTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Short, stable detail for `Cache-Status` (never internal error text).
    fn detail(&self) -> &'static str {
        match self {
            ProxyError::Origin(e) => e.label(),
            ProxyError::LockTimeout => "lock-timeout",
            ProxyError::FetchLost => "fetch-lost",
            ProxyError::BadRequest(_) => "bad-request",
        }
    }

    /// Logs the failure once and renders it for the client. `outcome` says how
    /// the request got here (a leader's miss, a follower's wait, a pass).
    pub fn into_response(self, outcome: CacheOutcome, path: &str) -> Response<ProxyBody> {
        let status = self.status();
        match &self {
            ProxyError::BadRequest(_) => tracing::debug!(path, error = %self, "refused request"),
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
        headers.insert(
            CACHE_STATUS.clone(),
            cache_status_value(outcome, None, false, None, Some(self.detail())),
        );
        response
    }
}
