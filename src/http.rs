//! HTTP semantics a shared cache needs, as pure functions over headers: which
//! requests may be served from or coalesced into the cache, which responses may
//! be shared with other clients, cache keys, hop-by-hop hygiene and the RFC 9211
//! `Cache-Status` header. Holds no state.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// The `Cache-Status` header name (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The `X-Forwarded-For` header name.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The `X-Forwarded-Proto` header name.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// What corral appends to `Via` in both directions (RFC 9110 §7.6.3).
pub const VIA_CORRAL: &str = "1.1 corral";

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header
/// names, and `Upgrade` (corral does not tunnel protocol upgrades).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Why a request or its answer bypasses the cache; each is a distinct,
/// bounded label for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// No route matched the path.
    NoRoute,
    /// The route says `cache = false`.
    RouteBypass,
    /// The method is neither GET nor HEAD.
    Method,
    /// The request carries `Authorization` or `Cookie`.
    Credentials,
    /// The key recently answered with something unshareable (hit-for-pass).
    HitForPass,
    /// The leader's answer could not be shared with this request.
    Unshareable,
}

impl PassReason {
    /// Stable lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            PassReason::NoRoute => "no-route",
            PassReason::RouteBypass => "route",
            PassReason::Method => "method",
            PassReason::Credentials => "credentials",
            PassReason::HitForPass => "hit-for-pass",
            PassReason::Unshareable => "unshareable",
        }
    }
}

/// Whether a request may be answered from the cache or coalesced with others.
/// Only GET and HEAD without credentials may be (RFC 9111 §3.5: a shared cache
/// must not reuse answers to requests with `Authorization`; `Cookie` marks a
/// personalised request).
pub fn request_pass_reason(method: &Method, headers: &HeaderMap) -> Option<PassReason> {
    if method != Method::GET && method != Method::HEAD {
        return Some(PassReason::Method);
    }
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE) {
        return Some(PassReason::Credentials);
    }
    None
}

/// What a shared cache may do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shareability {
    /// Store it for the route's TTL and hand it to followers.
    Store,
    /// Hand it to the clients waiting now, but do not store it (errors, redirects…).
    ShareOnly,
    /// Only the client whose request fetched it may see it.
    Private,
}

/// Decides what a shared cache may do with a response to a GET.
///
/// Never shared: `Cache-Control: no-store`, `private` or `no-cache` (which would
/// require revalidation before every reuse), `Set-Cookie`, `Vary: *`.
/// Stored: shareable 200 responses. Other shareable statuses go to the clients
/// waiting now and are never stored, so an error is not cached.
pub fn classify_response(status: StatusCode, headers: &HeaderMap) -> Shareability {
    if headers.contains_key(header::SET_COOKIE) || vary_is_star(headers) {
        return Shareability::Private;
    }
    let forbids_sharing = cache_control_directives(headers).any(|(name, _)| {
        name.eq_ignore_ascii_case("no-store")
            || name.eq_ignore_ascii_case("private")
            || name.eq_ignore_ascii_case("no-cache")
    });
    if forbids_sharing {
        Shareability::Private
    } else if status == StatusCode::OK {
        Shareability::Store
    } else {
        Shareability::ShareOnly
    }
}

/// Iterates `Cache-Control` directives as `(name, argument)`, across repeated
/// header lines; quoted arguments are unquoted; a value that is not visible
/// ASCII is skipped.
pub fn cache_control_directives(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|directive| {
            let directive = directive.trim();
            if directive.is_empty() {
                return None;
            }
            Some(match directive.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (directive, None),
            })
        })
}

fn vary_is_star(headers: &HeaderMap) -> bool {
    vary_names(headers).any(|name| name == "*")
}

/// The field names a response's `Vary` lists, lower-cased by the caller's need.
pub fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// The primary cache key: the request's host and its path with query, verbatim.
/// GET and HEAD share it: a HEAD is answered from the stored GET.
pub fn cache_key(host: &str, path_and_query: &str) -> String {
    let mut key = String::with_capacity(host.len() + path_and_query.len());
    key.push_str(host);
    // Host names are case-insensitive; paths are not.
    key.make_ascii_lowercase();
    key.push_str(path_and_query);
    key
}

/// Appends `value` to a comma-separated list header, creating it if absent.
pub fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    let combined = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {value}"),
        _ => value.to_owned(),
    };
    if let Ok(combined) = HeaderValue::from_str(&combined) {
        headers.insert(name.clone(), combined);
    }
}

/// How corral handled a request, as reported in `Cache-Status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served fresh from the hot cache.
    Hit,
    /// This request's fetch went to the origin (it led the flight).
    Miss,
    /// This request waited on another request's fetch and got its answer.
    Coalesced,
    /// Served from the hot cache past its freshness, without the origin.
    Stale(StaleReason),
    /// Sent to the origin without caching or coalescing.
    Pass(PassReason),
    /// Answered with an error by corral itself.
    Error,
}

impl CacheOutcome {
    /// Bounded metric label: hit, miss, coalesced, stale, pass or error.
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Stale(_) => "stale",
            CacheOutcome::Pass(_) => "pass",
            CacheOutcome::Error => "error",
        }
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
}

impl StaleReason {
    /// Stable lower-case label, used as the `Cache-Status` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::CircuitOpen => "stale-circuit-open",
            StaleReason::RetryAfter => "stale-retry-after",
            StaleReason::Overloaded => "stale-overloaded",
        }
    }
}

/// Builds the RFC 9211 `Cache-Status` value for one response.
///
/// `hit` carries the remaining freshness as `ttl`; a leader's miss says `stored`
/// when it was stored; a follower says `collapsed`; a pass says `fwd=bypass`
/// with the reason in `detail`; a stale answer is a `hit` whose `detail` says
/// why it was served stale.
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut map = headers(&[
            ("connection", "close, x-trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "abc"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("content-type"));
    }

    #[test]
    fn only_credential_free_get_and_head_are_cacheable() {
        let none = HeaderMap::new();
        assert_eq!(request_pass_reason(&Method::GET, &none), None);
        assert_eq!(request_pass_reason(&Method::HEAD, &none), None);
        assert_eq!(
            request_pass_reason(&Method::POST, &none),
            Some(PassReason::Method)
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            request_pass_reason(&Method::GET, &auth),
            Some(PassReason::Credentials)
        );
        let cookie = headers(&[("cookie", "session=1")]);
        assert_eq!(
            request_pass_reason(&Method::GET, &cookie),
            Some(PassReason::Credentials)
        );
    }

    #[test]
    fn private_no_store_no_cache_set_cookie_and_vary_star_are_never_shared() {
        for pairs in [
            &[("cache-control", "private")][..],
            &[("cache-control", "max-age=60, no-store")][..],
            &[("cache-control", "public"), ("cache-control", "No-Cache")][..],
            &[("set-cookie", "id=1")][..],
            &[("vary", "accept, *")][..],
        ] {
            assert_eq!(
                classify_response(StatusCode::OK, &headers(pairs)),
                Shareability::Private,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn shareable_200_is_stored_other_statuses_only_shared() {
        let plain = headers(&[("cache-control", "public, max-age=\"30\"")]);
        assert_eq!(
            classify_response(StatusCode::OK, &plain),
            Shareability::Store
        );
        assert_eq!(
            classify_response(StatusCode::INTERNAL_SERVER_ERROR, &plain),
            Shareability::ShareOnly
        );
    }

    #[test]
    fn cache_control_directives_unquote_and_span_lines() {
        let map = headers(&[
            ("cache-control", "max-age=\"5\", ,public"),
            ("cache-control", "s-maxage=9"),
        ]);
        let all: Vec<_> = cache_control_directives(&map).collect();
        assert_eq!(
            all,
            vec![
                ("max-age", Some("5")),
                ("public", None),
                ("s-maxage", Some("9"))
            ]
        );
    }

    #[test]
    fn cache_key_lowercases_host_not_path() {
        assert_eq!(cache_key("Shop.Example", "/A?b=C"), "shop.example/A?b=C");
    }

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
    fn append_to_list_joins_with_comma() {
        let mut map = headers(&[("via", "1.0 edge")]);
        append_to_list(&mut map, &header::VIA, VIA_CORRAL);
        assert_eq!(map.get("via").unwrap(), "1.0 edge, 1.1 corral");
    }
}
