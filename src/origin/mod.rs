//! The outbound side: one pooled HTTP client per origin, with connect and
//! response timeouts. Returns typed [`OriginError`]s so the proxy can tell a
//! timeout (504) from a refused or broken connection (502).
//!
//! This module never touches the cache or the flight map.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::header::HeaderMap;

use crate::config::OriginConfig;

/// Why the origin gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to origin: {0}")]
    Connect(#[source] reqwest::Error),
    /// The origin did not answer, or finish its body, within the allowed time.
    #[error("origin timed out after {0:?}")]
    TimedOut(Duration),
    /// The connection broke before a complete response head arrived.
    #[error("origin request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// The response head arrived but its body broke off midway.
    #[error("origin body broke off: {0}")]
    Body(#[source] reqwest::Error),
}

impl OriginError {
    /// Whether the failure was the origin being too slow (maps to 504).
    pub fn is_timeout(&self) -> bool {
        matches!(self, OriginError::TimedOut(_))
    }

    /// Bounded metric label for the failure's kind.
    pub fn label(&self) -> &'static str {
        match self {
            OriginError::Connect(_) => "connect_error",
            OriginError::TimedOut(_) => "timeout",
            OriginError::Request(_) => "request_error",
            OriginError::Body(_) => "body_error",
        }
    }
}

/// A pooled, keep-alive client bound to one origin base URL.
///
/// Redirects are returned to the caller, never followed; no proxy environment
/// variables are honoured; no default headers are added, so what the client
/// sent (minus hop-by-hop headers) is what the origin sees.
#[derive(Clone, Debug)]
pub struct OriginClient {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl OriginClient {
    /// Builds the client from `[origin]`.
    ///
    /// # Errors
    /// The TLS/resolver backend could not be initialised.
    pub fn new(config: &OriginConfig) -> Result<OriginClient, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .default_headers(HeaderMap::new())
            .build()?;
        Ok(OriginClient {
            client,
            base: config.url.get_ref().trim_end_matches('/').to_owned(),
            timeout: config.timeout,
        })
    }

    /// The `Host` the origin expects (the authority of its URL).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a cache-fill GET. The whole exchange, body included, must finish
    /// within the origin timeout; read the body with [`read_chunk`].
    ///
    /// # Errors
    /// [`OriginError`] when no response head arrives in time.
    pub async fn fetch(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, OriginError> {
        let url = format!("{}{}", self.base, path_and_query);
        self.client
            .get(url)
            .headers(headers)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.classify(e, OriginError::Request))
    }

    /// Forwards a request with a streamed body. No total deadline applies, only
    /// the connect timeout and the longest silence between reads, so large
    /// uploads and downloads are not cut short.
    ///
    /// # Errors
    /// [`OriginError`] when no response head arrives.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, OriginError> {
        let url = format!("{}{}", self.base, path_and_query);
        self.client
            .request(method, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.classify(e, OriginError::Request))
    }

    /// Reads the next chunk of a fill's body; `None` at a clean end.
    ///
    /// # Errors
    /// [`OriginError::TimedOut`] past the deadline, [`OriginError::Body`] when
    /// the body breaks off (a truncated body is never reported as complete).
    pub async fn read_chunk(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<Option<Bytes>, OriginError> {
        response
            .chunk()
            .await
            .map_err(|e| self.classify(e, OriginError::Body))
    }

    fn classify(
        &self,
        error: reqwest::Error,
        other: fn(reqwest::Error) -> OriginError,
    ) -> OriginError {
        if error.is_timeout() {
            OriginError::TimedOut(self.timeout)
        } else if error.is_connect() {
            OriginError::Connect(error)
        } else {
            other(error)
        }
    }
}
