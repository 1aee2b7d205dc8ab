//! The per-request value: one request as it travels the path, built once in
//! [`Proxy::handle`](super::Proxy::handle) and read by every step instead of
//! a list of loose arguments.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;

use super::forward::ClientScheme;
use crate::cache::policy::RequestFacts;
use crate::cache::{CacheKey, NO_REQUEST_DIRECTIVES};
use crate::config::{ClientNoCache, Route};
use crate::http::directives::RequestDirectives;
use crate::metrics::RouteMetrics;
use crate::origin::{OriginClient, TimeoutOverrides};

/// One request: what the client sent, where it came from, the route it
/// matched and where it goes upstream.
pub(super) struct RequestContext<'a> {
    /// The request head.
    pub parts: &'a Parts,
    /// The client's address.
    pub client: SocketAddr,
    /// How the client reached corral (plaintext or TLS).
    pub scheme: ClientScheme,
    /// The origin the request's route picks (the default one when no route
    /// matched), from the settings the request started with.
    pub origin: &'a OriginClient,
    /// `None` when no route matched (the request is passed).
    pub route: Option<&'a Route>,
    /// The matched route's metric handles (or the unmatched ones).
    pub route_metrics: &'a RouteMetrics,
    /// The `Host` sent upstream: the client's, validated and canonical, on a
    /// route that preserves it; `None` lets the origin client send the origin's.
    pub upstream_host: Option<HeaderValue>,
    /// The primary cache key: the authority sent upstream, the path and query.
    pub key: CacheKey,
    /// The client's cache directives, parsed once (only when it sent any);
    /// on a route that ignores them, without those that force the origin.
    pub wishes: Option<RequestDirectives>,
}

impl RequestContext<'_> {
    /// The client's cache directives (none said: [`NO_REQUEST_DIRECTIVES`]).
    pub fn wishes(&self) -> &RequestDirectives {
        self.wishes.as_ref().unwrap_or(&NO_REQUEST_DIRECTIVES)
    }

    /// What storing and sharing an answer to this request depend on.
    pub fn facts(&self) -> RequestFacts {
        RequestFacts::new(&self.parts.headers, self.wishes())
    }

    /// The request's path, for logs and error answers.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }
}

/// The request's cache directives, parsed only when it carries
/// `Cache-Control` or `Pragma`; on a route that ignores clients' no-cache,
/// without the directives that would force a trip to the origin.
pub(super) fn request_directives(
    headers: &HeaderMap,
    policy: ClientNoCache,
) -> Option<RequestDirectives> {
    crate::http::contains_any(headers, &[header::CACHE_CONTROL, header::PRAGMA]).then(|| {
        let directives = RequestDirectives::from_headers(headers);
        match policy {
            ClientNoCache::Honour => directives,
            ClientNoCache::Ignore => directives.without_origin_forcing(),
        }
    })
}

/// The origin time limits `route` overrides.
pub(super) fn route_timeouts(route: &Route) -> TimeoutOverrides {
    TimeoutOverrides {
        connect: route.connect_timeout,
        first_byte: route.first_byte_timeout,
        response: route.timeout,
        request: route.request_timeout,
    }
}

/// Whether the request head announces content: a non-zero `Content-Length`
/// or any `Transfer-Encoding` (HTTP/2 bodies show in the body's end-of-stream).
pub(super) fn declares_content(parts: &Parts) -> bool {
    crate::http::contains_any(
        &parts.headers,
        &[header::TRANSFER_ENCODING, header::CONTENT_LENGTH],
    ) && (parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|length| length.as_bytes().iter().any(|b| *b != b'0')))
}

/// The host a request addressed: the URI authority (HTTP/2, absolute form) or `Host`.
pub(super) fn request_host(parts: &Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The request target's path and query, as sent upstream.
pub(super) fn path_and_query(parts: &Parts) -> &str {
    parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
}
