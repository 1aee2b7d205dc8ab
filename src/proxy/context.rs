//! The per-request value: one request as it travels the path, built once in
//! [`Proxy::handle`](super::Proxy::handle) and read by every step instead of
//! a list of loose arguments.

use std::net::SocketAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use tokio::time::Instant;

use super::forward::ClientScheme;
use crate::cache::policy::RequestFacts;
use crate::cache::{CacheKey, NO_REQUEST_DIRECTIVES};
use crate::config::{ClientNoCache, Route};
use crate::http::directives::RequestDirectives;
use crate::metrics::RouteMetrics;
use crate::origin::{OriginClient, TimeoutOverrides};

/// Who sent a request, and when corral had its head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// The client's address.
    pub client: SocketAddr,
    /// When the head was handed to corral: the "now" a cache hit is judged
    /// and rendered at, so a hit reads the clock once, not once per step.
    pub at: Instant,
}

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
    /// The origin's own authority: what the key names when `upstream_host`
    /// is `None`.
    pub origin_authority: &'a str,
    /// The primary cache key ([`RequestContext::key`]), built on first use:
    /// a hit looks the key up without building it.
    pub key: OnceLock<CacheKey>,
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

    /// The authority sent upstream: the client's `Host` on a route that
    /// preserves it, else the origin's.
    pub fn authority(&self) -> &str {
        self.upstream_host
            .as_ref()
            .and_then(|host| host.to_str().ok())
            .unwrap_or(self.origin_authority)
    }

    /// The primary cache key: the authority sent upstream, the path and query.
    pub fn key(&self) -> &CacheKey {
        self.key
            .get_or_init(|| CacheKey::new(self.authority(), path_and_query(self.parts)))
    }

    /// Runs `lookup` with the key's encoded form, without building the key
    /// when it has not been yet ([`CacheKey::with_encoded`]).
    pub fn with_encoded_key<R>(&self, lookup: impl FnOnce(&str) -> R) -> R {
        match self.key.get() {
            Some(key) => lookup(key.as_str()),
            None => CacheKey::with_encoded(self.authority(), path_and_query(self.parts), lookup),
        }
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
