//! HTTP semantics a shared cache needs, as pure functions over headers: which
//! requests may be served from or coalesced into the cache, which responses may
//! be shared with other clients, cache keys, hop-by-hop hygiene and the RFC 9211
//! `Cache-Status` header. Holds no state.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::cache::freshness::{NotStorable, ResponseDirectives};

/// The `Cache-Status` header name (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The `X-Forwarded-For` header name.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The `X-Forwarded-Proto` header name.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// What corral appends to `Via` in both directions (RFC 9110 §7.6.3).
pub const VIA_CORRAL: &str = "1.1 corral";

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1)
/// nor stored (RFC 9111 §3.1: the proxy authentication fields too).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-authentication-info"),
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
    /// Store it and hand it to followers.
    Store,
    /// Hand it to the clients waiting now, but do not store it (errors,
    /// 404s without negative caching, answers without freshness…).
    ShareOnly,
    /// Only the client whose request fetched it may see it.
    Private,
}

/// Decides what a shared cache may do with a response to a GET, from the
/// directives of the field that governs it (see [`ResponseDirectives`]) and
/// the storage verdict of [`crate::cache::freshness::not_storable_reason`].
///
/// Never shared with another client: `no-store`, `private` (either form),
/// `Set-Cookie`, `Vary: *`. Otherwise stored when storable, else handed only
/// to the clients waiting for this very fetch. A `no-cache` response is
/// shared with those: it left the origin after they asked, which is all a
/// validation would tell them (later requests revalidate it).
pub fn shareability(
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    not_storable: Option<NotStorable>,
) -> Shareability {
    let never_shared = directives.no_store
        || directives.private.is_some()
        || headers.contains_key(header::SET_COOKIE)
        || vary_is_star(headers);
    if never_shared {
        Shareability::Private
    } else if not_storable.is_none() {
        Shareability::Store
    } else {
        Shareability::ShareOnly
    }
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

/// The path and query a `Location` or `Content-Location` value names on the
/// request's own origin, resolved against `request_path`, or `None` when it
/// names another origin (or is not a URI). RFC 9111 §4.4 lets a cache
/// invalidate only URIs on the same origin as the request. Dot segments are
/// not resolved.
pub fn same_origin_path(host: &str, request_path: &str, target: &str) -> Option<String> {
    let target = target.trim();
    if target.is_empty() {
        return None;
    }
    let scheme_end = target.find(':').filter(|&at| {
        let scheme = &target[..at];
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let network_path = match scheme_end {
        Some(at) if target[..at].eq_ignore_ascii_case("http") => {
            Some(target[at + 1..].strip_prefix("//")?)
        }
        Some(_) => return None,
        None => target.strip_prefix("//"),
    };
    if let Some(rest) = network_path {
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        return authority
            .eq_ignore_ascii_case(host)
            .then(|| absolute_path(path));
    }
    if target.starts_with('/') {
        return Some(absolute_path(target));
    }
    // A relative path: next to the request's last segment.
    let directory = &request_path[..request_path.rfind('/').map_or(0, |at| at + 1)];
    let relative = target.split('#').next().unwrap_or("");
    Some(format!("{directory}{relative}"))
}

/// `path` (which may be empty or start with `?`) as an absolute path, without
/// a fragment.
fn absolute_path(path: &str) -> String {
    let path = path.split('#').next().unwrap_or("");
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// Adds a `Date` (now) to a response that lacks one, as a recipient with a
/// clock must before caching or forwarding it (RFC 9110 §6.6.1).
pub fn ensure_date(headers: &mut HeaderMap, now: std::time::SystemTime) {
    if !headers.contains_key(header::DATE)
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(now))
    {
        headers.insert(header::DATE, date);
    }
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
    /// Bounded metric label: hit, miss, coalesced, stale, pass or error.
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss | CacheOutcome::Revalidated { collapsed: false } => "miss",
            CacheOutcome::Coalesced | CacheOutcome::Revalidated { collapsed: true } => "coalesced",
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

    fn shared(
        pairs: &[(&'static str, &'static str)],
        not_storable: Option<NotStorable>,
    ) -> Shareability {
        let map = headers(pairs);
        shareability(&map, &ResponseDirectives::from_headers(&map), not_storable)
    }

    #[test]
    fn private_no_store_set_cookie_and_vary_star_are_never_shared() {
        for pairs in [
            &[("cache-control", "private")][..],
            &[("cache-control", "max-age=60, no-store")][..],
            &[
                ("cache-control", "public"),
                ("cache-control", "Private=\"x\""),
            ][..],
            &[
                ("cdn-cache-control", "no-store"),
                ("cache-control", "public"),
            ][..],
            &[("set-cookie", "id=1")][..],
            &[("vary", "accept, *")][..],
        ] {
            assert_eq!(shared(pairs, None), Shareability::Private, "{pairs:?}");
        }
    }

    #[test]
    fn storable_answers_are_stored_others_only_shared() {
        let plain = [("cache-control", "public, max-age=\"30\"")];
        assert_eq!(shared(&plain, None), Shareability::Store);
        assert_eq!(
            shared(&plain, Some(NotStorable::Status)),
            Shareability::ShareOnly
        );
        // no-cache is revalidated before reuse, but handed to the clients waiting now.
        assert_eq!(
            shared(&[("cache-control", "no-cache")], None),
            Shareability::Store
        );
        // A targeted field decides: Cache-Control's no-store is for browsers.
        let cdn = [
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ];
        assert_eq!(shared(&cdn, None), Shareability::Store);
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

    #[test]
    fn same_origin_path_resolves_location_on_the_requests_host_only() {
        let host = "shop.example:8080";
        let resolve = |target| same_origin_path(host, "/api/orders/new", target);
        assert_eq!(resolve("/api/orders/7").as_deref(), Some("/api/orders/7"));
        assert_eq!(resolve("7?x=1").as_deref(), Some("/api/orders/7?x=1"));
        assert_eq!(
            resolve("http://Shop.Example:8080/api/orders/7").as_deref(),
            Some("/api/orders/7")
        );
        assert_eq!(resolve("http://shop.example:8080").as_deref(), Some("/"));
        assert_eq!(resolve("//shop.example:8080/a").as_deref(), Some("/a"));
        assert_eq!(resolve("http://other.example/api/orders/7"), None);
        assert_eq!(resolve("https://shop.example:8080/api/orders/7"), None);
        assert_eq!(resolve("//other.example/a"), None);
        assert_eq!(resolve("mailto:a@b"), None);
        assert_eq!(resolve(""), None);
    }

    #[test]
    fn missing_date_is_added_and_a_present_one_kept() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        let mut map = HeaderMap::new();
        ensure_date(&mut map, at);
        assert_eq!(map["date"], "Sun, 06 Nov 1994 08:49:37 GMT");
        ensure_date(&mut map, std::time::SystemTime::now());
        assert_eq!(map["date"], "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn proxy_authentication_fields_are_never_kept() {
        let mut map = headers(&[
            ("proxy-authenticate", "Basic"),
            ("proxy-authentication-info", "nextnonce=\"x\""),
            ("etag", "\"v1\""),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn append_to_list_joins_with_comma() {
        let mut map = headers(&[("via", "1.0 edge")]);
        append_to_list(&mut map, &header::VIA, VIA_CORRAL);
        assert_eq!(map.get("via").unwrap(), "1.0 edge, 1.1 corral");
    }
}
