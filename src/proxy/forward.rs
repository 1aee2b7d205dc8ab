//! What corral sends upstream: the one place that decides which of a client's
//! request headers reach the origin, and which headers corral adds.
//!
//! # Cache fills: an allow-list
//!
//! A fill's answer is handed to every client that asks for its key, so a fill
//! request is built from scratch, never from a copy of the client's head. It
//! carries only:
//!
//! - the content-negotiation and informational fields in [`FILL_ALLOWED`]
//!   (an origin that varies on them says so in `Vary`, and the cache keeps
//!   one variant per value);
//! - the fields the route names in `forward_headers` (each one then selects
//!   the stored variant, so a client can only change what the origin sees for
//!   clients sending the same value);
//! - corral's own `Host` (the preserved, validated host on a route that
//!   preserves it; else the origin's, set by the origin client),
//!   `X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded` and `Via` (the
//!   proto is `https` on a listener that terminates TLS).
//!
//! Never the client's framing (`Content-Length`, `Transfer-Encoding`,
//! `Expect`, `Upgrade`, trailers: a fill has no body, and a dangling length
//! would make the origin read the next pooled request as this one's body),
//! conditionals or ranges (the fill must fetch the whole shareable answer),
//! credentials (such requests are never filled), or any other field.
//!
//! # Passes: the client's end-to-end fields
//!
//! A pass's answer goes to its one client, so it carries the client's
//! end-to-end fields with its body, minus hop-by-hop fields and `Expect`
//! (corral's listener already answered it). Framing comes from the body
//! corral sends: a bodiless pass carries no `Content-Length` or
//! `Transfer-Encoding`. On a cacheable route a pass also drops the
//! client's forwarding and override fields (as fills do) unless the route
//! lists them; on a pass-through route corral appends to the client's
//! `X-Forwarded-For`, as proxies conventionally do.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::Route;
use crate::http::{
    VIA_CORRAL, X_FORWARDED_FOR, X_FORWARDED_PROTO, append_to_list, strip_hop_by_hop,
};

/// Fields a cache fill forwards from the client without the route naming them.
pub(super) const FILL_ALLOWED: [HeaderName; 7] = [
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::ACCEPT_CHARSET,
    header::USER_AGENT,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

/// Client fields that tell an origin (or a framework in front of it) to use
/// another URL, method, host, scheme or client address than the request's.
/// An origin that honours or reflects them would put one client's choice into
/// an answer shared with everyone, so on cacheable routes they reach the
/// origin only when the route lists them (and then they select the variant).
const OVERRIDES: [&str; 12] = [
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-host",
    "x-original-host",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-proxyuser-ip",
];

/// Whether `name` is in the forwarding family (`X-Forwarded-*`, including
/// `X-Forwarded-Host`, `-Scheme`, `-Port`, `-Server`) or an override field.
fn is_forwarding_or_override(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-forwarded-") || OVERRIDES.contains(&name)
}

/// The `Forwarded` header (RFC 7239).
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// How the client reached corral, as corral's forwarding headers state it
/// (`X-Forwarded-Proto`, `Forwarded: proto=`): an origin that builds
/// absolute links or redirects from them must not send an HTTPS client to
/// plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientScheme {
    /// A plaintext listener.
    Http,
    /// A listener that terminates TLS.
    Https,
}

impl ClientScheme {
    fn as_str(self) -> &'static str {
        match self {
            ClientScheme::Http => "http",
            ClientScheme::Https => "https",
        }
    }
}

/// The headers of a cache fill for a client at `client` on `route`:
/// the allow-list above, plus `host` when the route preserves it.
pub(super) fn fill_headers(
    client_headers: &HeaderMap,
    client: SocketAddr,
    scheme: ClientScheme,
    route: &Route,
    host: Option<&HeaderValue>,
    forward_cache_directives: bool,
) -> HeaderMap {
    let mut headers =
        HeaderMap::with_capacity(FILL_ALLOWED.len() + route.forward_headers.len() + 5);
    let allowed = FILL_ALLOWED
        .iter()
        .filter(|name| {
            forward_cache_directives
                || (**name != header::CACHE_CONTROL && **name != header::PRAGMA)
        })
        .chain(route.forward_headers.iter());
    for name in allowed {
        for value in client_headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host.clone());
    }
    let keep_clients_forwarding = |name: &HeaderName| route.forward_headers.contains(name);
    set_own_forwarding(&mut headers, client, scheme, &keep_clients_forwarding);
    headers.insert(header::VIA, HeaderValue::from_static(VIA_CORRAL));
    headers
}

/// The headers of a pass for a client at `client`: its end-to-end fields,
/// framed for `body` (see the module docs), with `host` when the route
/// preserves it. `route` is `None` when no route matched.
pub(super) fn pass_headers(
    client_headers: &HeaderMap,
    client: SocketAddr,
    scheme: ClientScheme,
    route: Option<&Route>,
    host: Option<&HeaderValue>,
    has_body: bool,
) -> HeaderMap {
    let mut headers = client_headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    if !has_body {
        headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host.clone());
    }
    match route {
        Some(route) if route.cache => {
            let listed = |name: &HeaderName| route.forward_headers.contains(name);
            set_own_forwarding(&mut headers, client, scheme, &listed);
        }
        _ => {
            append_to_list(&mut headers, &X_FORWARDED_FOR, &client.ip().to_string());
            headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(scheme.as_str()),
            );
        }
    }
    append_to_list(&mut headers, &header::VIA, VIA_CORRAL);
    headers
}

/// Replaces the forwarding family and drops the override fields, except those
/// `keep` says the route lists, then sets corral's own `X-Forwarded-For`,
/// `X-Forwarded-Proto` and `Forwarded` (unless listed: the client's stay).
fn set_own_forwarding(
    headers: &mut HeaderMap,
    client: SocketAddr,
    scheme: ClientScheme,
    keep: &dyn Fn(&HeaderName) -> bool,
) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_forwarding_or_override(name) && !keep(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    let ip = client.ip();
    if !headers.contains_key(&X_FORWARDED_FOR)
        && let Ok(value) = HeaderValue::from_str(&ip.to_string())
    {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(scheme.as_str()),
        );
    }
    if !headers.contains_key(&FORWARDED) {
        let proto = scheme.as_str();
        // RFC 7239 §6: an IPv6 address is bracketed and quoted.
        let node = if ip.is_ipv6() {
            format!("for=\"[{ip}]\";proto={proto}")
        } else {
            format!("for={ip};proto={proto}")
        };
        if let Ok(value) = HeaderValue::from_str(&node) {
            headers.insert(FORWARDED.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::http::test_support::headers;

    fn route(extra: &str) -> Route {
        let text = format!("[origin]\nurl = \"http://o:1\"\n[[route]]\nmatch = \"/\"\n{extra}");
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        config.route_table().routes()[0].clone()
    }

    const CLIENT: &str = "10.1.2.3:4567";

    #[test]
    fn a_fill_never_carries_the_clients_framing_or_unlisted_fields() {
        let sent = headers(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "host=evil.example"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("origin", "https://evil.example"),
            ("if-none-match", "\"v1\""),
            ("range", "bytes=0-1"),
            ("accept-language", "fr"),
            ("user-agent", "curl/8"),
        ]);
        let headers = fill_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            &route(""),
            None,
            true,
        );
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept-language",
                "forwarded",
                "user-agent",
                "via",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(headers["forwarded"], "for=10.1.2.3;proto=http");
    }

    #[test]
    fn a_listed_field_is_forwarded_as_the_client_sent_it() {
        let sent = headers(&[
            ("x-forwarded-host", "shop.example"),
            ("origin", "https://a.example"),
        ]);
        let route = route("forward_headers = [\"X-Forwarded-Host\", \"Origin\"]");
        let headers = fill_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            &route,
            None,
            true,
        );
        assert_eq!(headers["x-forwarded-host"], "shop.example");
        assert_eq!(headers["origin"], "https://a.example");
    }

    #[test]
    fn ignored_cache_directives_are_not_forwarded() {
        let sent = headers(&[("cache-control", "no-cache"), ("pragma", "no-cache")]);
        let headers = fill_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            &route(""),
            None,
            false,
        );
        assert!(!headers.contains_key("cache-control"));
        assert!(!headers.contains_key("pragma"));
    }

    #[test]
    fn a_bodiless_pass_carries_no_length_and_never_expect() {
        let sent = headers(&[
            ("content-length", "5"),
            ("expect", "100-continue"),
            ("x-app", "1"),
        ]);
        let route = route("cache = false");
        let headers = pass_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            Some(&route),
            None,
            false,
        );
        assert!(!headers.contains_key("content-length"));
        assert!(!headers.contains_key("expect"));
        assert_eq!(headers["x-app"], "1");
        let with_body = pass_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            Some(&route),
            None,
            true,
        );
        assert_eq!(with_body["content-length"], "5");
    }

    #[test]
    fn a_pass_on_a_cacheable_route_replaces_forwarding_fields() {
        let sent = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-original-url", "/admin")]);
        let cached = route("");
        let headers = pass_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            Some(&cached),
            None,
            false,
        );
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        assert!(!headers.contains_key("x-original-url"));
        let passing = route("cache = false");
        let headers = pass_headers(
            &sent,
            CLIENT.parse().unwrap(),
            ClientScheme::Http,
            Some(&passing),
            None,
            false,
        );
        assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let headers = fill_headers(
            &HeaderMap::new(),
            "[::1]:80".parse().unwrap(),
            ClientScheme::Http,
            &route(""),
            None,
            true,
        );
        assert_eq!(headers["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn a_tls_client_is_forwarded_as_https() {
        let client = CLIENT.parse().unwrap();
        let filled = fill_headers(
            &HeaderMap::new(),
            client,
            ClientScheme::Https,
            &route(""),
            None,
            true,
        );
        assert_eq!(filled["x-forwarded-proto"], "https");
        assert_eq!(filled["forwarded"], "for=10.1.2.3;proto=https");
        let passed = pass_headers(
            &HeaderMap::new(),
            client,
            ClientScheme::Https,
            None,
            None,
            false,
        );
        assert_eq!(passed["x-forwarded-proto"], "https");
    }
}
