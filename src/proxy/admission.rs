//! What a request must pass before it is routed: corral opens no tunnels
//! (CONNECT), relays absolute-form targets only for the hosts it serves (so it is
//! never an open forward proxy), and refuses heads and declared bodies over the
//! `[server]` limits without reading them. A body that declares no length is
//! limited while it streams ([`Admission::limit_body`]).
//!
//! The listener ([`crate::server`]) enforces the limits that need the socket
//! (header timeout, idle timeout, connection cap, hyper's own head buffer); the
//! checks here need the parsed request and apply to HTTP/1 and HTTP/2 alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use http::request::Parts;
use http::uri::{Authority, Scheme};
use http::{Method, Version, header};
use http_body_util::BodyDataStream;

use super::body::BoxError;
use super::error::ProxyError;
use crate::config::Config;
use crate::metrics::{ClientLimit, ClientLimitCounters};

/// Bytes a header line adds besides its name and value: `": "` and CRLF.
const HEADER_LINE_OVERHEAD: u64 = 4;

/// Bytes a request line adds besides its method and target: two spaces,
/// `HTTP/1.1` and CRLF, plus the CRLF that ends the head.
const REQUEST_LINE_OVERHEAD: u64 = 14;

/// A host an absolute-form target may name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// Lowercase host name or address (IPv6 in brackets, as in a URI).
    host: String,
    /// The only port allowed, or `None` for any.
    port: Option<u16>,
}

impl AllowedHost {
    fn allows(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

/// The checks made on every request before routing, built once from `[server]`
/// and `[origin]` (neither is reloadable).
#[derive(Debug)]
pub(super) struct Admission {
    /// The origin's own authority (exact port), then `server.hosts`.
    hosts: Vec<AllowedHost>,
    max_header_size: u64,
    max_request_body: u64,
    counters: ClientLimitCounters,
}

/// Whether a body handed out by [`Admission::limit_body`] was cut off for
/// growing past the limit. Shared with the body's stream.
#[derive(Debug, Clone, Default)]
pub(super) struct BodyCutOff(Arc<AtomicBool>);

impl BodyCutOff {
    /// True once the body has grown past the limit (and errored instead).
    pub(super) fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The error a limited body's stream ends with when it grows past the limit;
/// whoever reads the body (the origin client) aborts its request.
#[derive(Debug, thiserror::Error)]
#[error("request body grew past the limit of {limit} bytes")]
pub(super) struct BodyLimitExceeded {
    limit: u64,
}

impl Admission {
    /// The checks `config` asks for, counting refusals in `counters`.
    pub(super) fn new(config: &Config, counters: ClientLimitCounters) -> Admission {
        let origin = config
            .origin
            .url
            .get_ref()
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.authority().cloned())
            .map(|authority| AllowedHost {
                host: authority.host().to_ascii_lowercase(),
                port: Some(authority.port_u16().unwrap_or(80)),
            });
        let listed = config.server.hosts.iter().filter_map(|entry| {
            let authority = entry.get_ref().parse::<Authority>().ok()?;
            Some(AllowedHost {
                host: authority.host().to_ascii_lowercase(),
                port: authority.port_u16(),
            })
        });
        Admission {
            hosts: origin.into_iter().chain(listed).collect(),
            max_header_size: config.server.max_header_size.as_u64(),
            max_request_body: config.server.max_request_body.as_u64(),
            counters,
        }
    }

    /// Refuses, and counts, a request that must not be routed.
    ///
    /// # Errors
    /// - [`ProxyError::ConnectRefused`] (405) for CONNECT;
    /// - [`ProxyError::MisdirectedRequest`] (421) for an HTTP/1 absolute-form
    ///   target naming a host that is neither the origin's nor in `server.hosts`;
    /// - [`ProxyError::HeadersTooLarge`] (431) for a head over `max_header_size`;
    /// - [`ProxyError::BodyTooLarge`] (413) for a `Content-Length` over
    ///   `max_request_body` (nothing of the body has been read).
    pub(super) fn check(&self, parts: &Parts) -> Result<(), ProxyError> {
        if parts.method == Method::CONNECT {
            self.counters.count(ClientLimit::Method);
            return Err(ProxyError::ConnectRefused);
        }
        // HTTP/2 always carries the authority in the URI (`:authority`, the
        // equivalent of `Host`); in HTTP/1 it is there only in absolute form.
        if parts.version < Version::HTTP_2
            && let Some(authority) = parts.uri.authority()
            && !self.allows(authority, parts.uri.scheme())
        {
            self.counters.count(ClientLimit::Host);
            return Err(ProxyError::MisdirectedRequest);
        }
        let size = head_size(parts);
        if size > self.max_header_size {
            self.counters.count(ClientLimit::HeaderSize);
            return Err(ProxyError::HeadersTooLarge {
                size,
                limit: self.max_header_size,
            });
        }
        if declared_length(parts).is_some_and(|length| length > self.max_request_body) {
            self.counters.count(ClientLimit::BodySize);
            return Err(ProxyError::BodyTooLarge {
                limit: self.max_request_body,
            });
        }
        Ok(())
    }

    /// `body` as a stream for the origin client that ends with
    /// [`BodyLimitExceeded`] as soon as it has grown past `max_request_body`,
    /// so an oversized body is never forwarded whole. The returned
    /// [`BodyCutOff`] tells the caller afterwards whether that happened.
    pub(super) fn limit_body<B>(&self, body: B) -> (reqwest::Body, BodyCutOff)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let limit = self.max_request_body;
        let counters = self.counters.clone();
        let cut_off = BodyCutOff::default();
        let flag = Arc::clone(&cut_off.0);
        let mut received: u64 = 0;
        let limited = BodyDataStream::new(body).map(move |chunk| {
            let chunk = chunk.map_err(Into::into)?;
            received = received.saturating_add(chunk.len() as u64);
            if received > limit {
                if !flag.swap(true, Ordering::AcqRel) {
                    counters.count(ClientLimit::BodySize);
                }
                return Err(BoxError::from(BodyLimitExceeded { limit }));
            }
            Ok::<_, BoxError>(chunk)
        });
        (reqwest::Body::wrap_stream(limited), cut_off)
    }

    /// The refusal for a body [`limit_body`](Self::limit_body) cut off.
    pub(super) fn body_too_large(&self) -> ProxyError {
        ProxyError::BodyTooLarge {
            limit: self.max_request_body,
        }
    }

    fn allows(&self, authority: &Authority, scheme: Option<&Scheme>) -> bool {
        let default_port = if scheme == Some(&Scheme::HTTPS) {
            443
        } else {
            80
        };
        let port = authority.port_u16().unwrap_or(default_port);
        self.hosts
            .iter()
            .any(|allowed| allowed.allows(authority.host(), port))
    }
}

/// The size of the request head as it was (about) sent in HTTP/1.1.
fn head_size(parts: &Parts) -> u64 {
    let uri = &parts.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = (parts.method.as_str().len() + target) as u64 + REQUEST_LINE_OVERHEAD;
    parts.headers.iter().fold(line, |size, (name, value)| {
        size + name.as_str().len() as u64 + value.len() as u64 + HEADER_LINE_OVERHEAD
    })
}

/// The body length the client announced, if it announced a valid one.
fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::Request;

    use super::*;

    fn admission(server: &str) -> (Admission, ClientLimitCounters) {
        let text = format!("[origin]\nurl = \"http://origin.test:9000\"\n[server]\n{server}");
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let counters = ClientLimitCounters::default();
        (Admission::new(&config, counters.clone()), counters)
    }

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn connect_is_refused_with_405() {
        let (admission, counters) = admission("");
        let request = Request::connect("origin.test:443").body(()).unwrap();
        let refused = admission.check(&parts(request)).unwrap_err();
        assert_eq!(refused.status(), 405);
        assert_eq!(counters.get(ClientLimit::Method), 1);
    }

    #[test]
    fn absolute_form_only_for_the_origin_and_listed_hosts() {
        let (admission, counters) = admission("hosts = [\"shop.example\", \"api.example:8080\"]");
        let check = |uri: &str| admission.check(&parts(Request::get(uri).body(()).unwrap()));
        assert!(check("/plain/origin-form").is_ok());
        assert!(check("http://origin.test:9000/p").is_ok());
        assert!(check("http://ORIGIN.test:9000/p").is_ok());
        assert!(check("http://shop.example/p").is_ok());
        assert!(check("http://shop.example:1234/p").is_ok());
        assert!(check("http://api.example:8080/p").is_ok());
        for foreign in [
            "http://evil.example/",
            "http://origin.test/p",
            "http://api.example/p",
            "https://origin.test:9001/p",
        ] {
            let refused = check(foreign).unwrap_err();
            assert_eq!(refused.status(), 421, "{foreign}");
        }
        assert_eq!(counters.get(ClientLimit::Host), 4);
    }

    #[test]
    fn http2_authority_is_not_absolute_form() {
        let (admission, _) = admission("");
        let request = Request::get("http://any.example/p")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert!(admission.check(&parts(request)).is_ok());
    }

    #[test]
    fn declared_body_over_the_limit_is_refused_unread() {
        let (admission, counters) = admission("max_request_body = \"1KiB\"");
        let with_length = |length: &str| {
            let request = Request::post("/upload")
                .header(header::CONTENT_LENGTH, length)
                .body(())
                .unwrap();
            admission.check(&parts(request))
        };
        assert!(with_length("1024").is_ok());
        assert_eq!(with_length("1025").unwrap_err().status(), 413);
        assert_eq!(with_length("2147483648").unwrap_err().status(), 413);
        assert_eq!(counters.get(ClientLimit::BodySize), 2);
    }

    #[test]
    fn head_over_the_limit_is_refused_with_431() {
        let (admission, counters) = admission("max_header_size = \"1KiB\"");
        let request = Request::get("/p")
            .header("x-big", "a".repeat(2000))
            .body(())
            .unwrap();
        assert_eq!(admission.check(&parts(request)).unwrap_err().status(), 431);
        assert_eq!(counters.get(ClientLimit::HeaderSize), 1);
    }

    #[tokio::test]
    async fn streamed_body_is_cut_off_past_the_limit() {
        let (admission, counters) = admission("max_request_body = \"10B\"");
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"123456")),
            Ok(Bytes::from_static(b"789012")),
        ];
        let body = http_body_util::StreamBody::new(
            futures_util::stream::iter(chunks).map(|c| c.map(http_body::Frame::data)),
        );
        let (limited, cut_off) = admission.limit_body(body);
        let mut stream = http_body_util::BodyDataStream::new(limited);
        assert_eq!(stream.next().await.unwrap().unwrap(), "123456");
        assert!(!cut_off.happened());
        assert!(stream.next().await.unwrap().is_err());
        assert!(cut_off.happened());
        assert_eq!(counters.get(ClientLimit::BodySize), 1);
    }
}
