//! Pure HTTP header grammar, holding no state and deciding no cache policy:
//! hop-by-hop hygiene, list fields, `Vary` names, same-origin targets, dates
//! ([`mod@self`]), cache directives ([`directives`], over RFC 8941
//! [`structured`] fields), validators ([`conditional`]) and plain HTTP/1.1
//! heads on the wire ([`wire`]).

pub mod conditional;
pub mod date;
pub mod directives;
pub mod range;
pub mod structured;
pub mod wire;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The `Cache-Status` header name (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The `X-Forwarded-For` header name.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The `X-Forwarded-Proto` header name.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// What corral appends to `Via` in both directions (RFC 9110 §7.6.3).
pub const VIA_CORRAL: &str = "1.1 corral";

/// Whether `headers` has a line named any of `names`: one walk over its
/// names. A request carries a handful of lines, so this costs less than a
/// hashed lookup per name, and a hit asks several such questions.
pub fn contains_any(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|key| names.contains(key))
}

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

/// Building header maps in unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use http::header::{HeaderMap, HeaderValue};

    /// A header map holding `pairs`, repeated names as separate lines.
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::headers;
    use super::*;

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
