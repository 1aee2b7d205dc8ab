//! What corral refuses, decided in one place: a request must pass these checks
//! before it is routed, served from the cache or sent upstream.
//!
//! - **Tunnels**: CONNECT is refused (405); corral opens none.
//! - **Host** (RFC 9112 §3.2, RFC 9113 §8.3.1): an HTTP/1.1 request without
//!   `Host`, with more than one, or with one that is not a valid
//!   `host[:port]` is refused with 400, as is an HTTP/2 request whose `Host`
//!   disagrees with its `:authority`. An absolute-form target's authority
//!   replaces `Host`, and must name a host corral serves (421 otherwise: it is
//!   never an open forward proxy).
//! - **Preserved hosts**: on a route that sends the client's host upstream
//!   (and so keys the cache on it), only hosts the config lists are accepted;
//!   others get 421 ([`Admission::preserved_host`]).
//! - **Sizes**: heads and declared bodies over the `[server]` limits are
//!   refused without reading them; a body that declares no length is limited
//!   while it streams ([`Admission::limit_body`]), and one whose framing
//!   breaks is the client's fault (400, [`BodyCheck`]).
//! - **Bodies on cacheable requests**: a GET or HEAD that carries a body on a
//!   cacheable route is refused with 400 (see `Proxy::handle`): its answer
//!   would be shared, and a fill never carries a body.
//!
//! The listener ([`crate::server`]) enforces the limits that need the socket
//! (header timeout, idle timeout, connection cap, hyper's own head buffer); the
//! checks here need the parsed request and apply to HTTP/1 and HTTP/2 alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::HeaderValue;
use http::request::Parts;
use http::uri::{Authority, Scheme};
use http::{Method, Version, header};
use http_body_util::BodyDataStream;

use super::body::BoxError;
use super::error::ProxyError;
use crate::cache::key::canonical_authority;
use crate::config::{Config, HostPattern, Route};
use crate::metrics::{ClientLimit, ClientLimitCounters};

/// Bytes a header line adds besides its name and value: `": "` and CRLF.
const HEADER_LINE_OVERHEAD: u64 = 4;

/// Bytes a request line adds besides its method and target: two spaces,
/// `HTTP/1.1` and CRLF, plus the CRLF that ends the head.
const REQUEST_LINE_OVERHEAD: u64 = 14;

/// The checks made on every request before routing, built once from `[server]`
/// and `[origin]` (neither is reloadable).
#[derive(Debug)]
pub(super) struct Admission {
    /// The origin's own authority (exact port), which absolute-form targets may name.
    origin_host: Option<HostPattern>,
    /// `server.hosts`.
    listed_hosts: Vec<HostPattern>,
    max_header_size: u64,
    max_request_body: u64,
    counters: ClientLimitCounters,
}

/// A refusal not yet counted: the limit it counts under, and its error.
pub(super) type Refused = (ClientLimit, ProxyError);

/// What became of a body handed out by [`Admission::limit_body`], known once
/// it has been read. Shared with the body's stream.
#[derive(Debug, Clone, Default)]
pub(super) struct BodyCheck(Arc<BodyFlags>);

/// Written by the body's stream (once each), read by the request's task.
#[derive(Debug, Default)]
struct BodyFlags {
    cut_off: AtomicBool,
    broken: AtomicBool,
    /// Woken when either flag is set, so the request need not wait for the
    /// origin to notice the aborted upload.
    refused: Notify,
}

impl BodyFlags {
    /// Sets `flag`; true the first time.
    fn raise(&self, flag: &AtomicBool) -> bool {
        let first = !flag.swap(true, Ordering::AcqRel);
        if first {
            self.refused.notify_one();
        }
        first
    }
}

impl BodyCheck {
    /// Resolves once the body has earned a refusal (see [`BodyCheck::refusal`]);
    /// never, if it does not.
    pub(super) async fn refused(&self) {
        let flags = &self.0;
        while !(flags.cut_off.load(Ordering::Acquire) || flags.broken.load(Ordering::Acquire)) {
            flags.refused.notified().await;
        }
    }

    /// The refusal the body earned, if any: it grew past the limit (and
    /// errored instead), or the client's framing of it broke (a malformed
    /// chunk, a connection closed short of its length). Either is the
    /// client's fault, whatever the origin made of the aborted upload.
    pub(super) fn refusal(&self, limit: u64) -> Option<ProxyError> {
        if self.0.cut_off.load(Ordering::Acquire) {
            Some(ProxyError::BodyTooLarge { limit })
        } else if self.0.broken.load(Ordering::Acquire) {
            Some(ProxyError::BadRequest("the request body is malformed"))
        } else {
            None
        }
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
        let origin_host = config.origin.authority().map(|authority| HostPattern {
            host: authority.host().to_ascii_lowercase(),
            port: Some(authority.port_u16().unwrap_or(80)),
        });
        let listed_hosts = config
            .server
            .hosts
            .iter()
            .filter_map(|entry| HostPattern::parse(entry.get_ref()))
            .collect();
        Admission {
            origin_host,
            listed_hosts,
            max_header_size: config.server.max_header_size.as_u64(),
            max_request_body: config.server.max_request_body.as_u64(),
            counters,
        }
    }

    /// Refuses, and counts, a request that must not be routed. Returns the
    /// authority the request addressed (validated; as the client spelled it),
    /// or `None` for an HTTP/1.0 request without `Host`.
    ///
    /// # Errors
    /// - [`ProxyError::ConnectRefused`] (405) for CONNECT;
    /// - [`ProxyError::BadRequest`] (400) for a missing (HTTP/1.1), repeated
    ///   or invalid `Host`, or an HTTP/2 `Host` that disagrees with `:authority`;
    /// - [`ProxyError::MisdirectedRequest`] (421) for an HTTP/1 absolute-form
    ///   target naming a host that is neither the origin's nor in `server.hosts`;
    /// - [`ProxyError::HeadersTooLarge`] (431) for a head over `max_header_size`;
    /// - [`ProxyError::BodyTooLarge`] (413) for a `Content-Length` over
    ///   `max_request_body` (nothing of the body has been read).
    pub(super) fn check<'a>(&self, parts: &'a Parts) -> Result<Option<&'a str>, ProxyError> {
        self.judge(parts).map_err(|refused| self.count(refused))
    }

    /// [`Admission::check`], counting nothing: for the listener's quick
    /// path, which leaves a refused request to the full path, where
    /// [`Admission::check`] refuses and counts it once.
    pub(super) fn judge<'a>(&self, parts: &'a Parts) -> Result<Option<&'a str>, Refused> {
        if parts.method == Method::CONNECT {
            return Err((ClientLimit::Method, ProxyError::ConnectRefused));
        }
        let head = HeadLines::read(parts);
        let addressed = addressed_by(parts, &head)
            .map_err(|reason| (ClientLimit::Malformed, ProxyError::BadRequest(reason)))?;
        // HTTP/2 always carries the authority in the URI (`:authority`, the
        // equivalent of `Host`); in HTTP/1 it is there only in absolute form.
        if parts.version < Version::HTTP_2
            && let Some(authority) = parts.uri.authority()
            && !self.allows(authority, parts.uri.scheme())
        {
            return Err((ClientLimit::Host, ProxyError::MisdirectedRequest));
        }
        let size = head.size;
        if size > self.max_header_size {
            return Err((
                ClientLimit::HeaderSize,
                ProxyError::HeadersTooLarge {
                    size,
                    limit: self.max_header_size,
                },
            ));
        }
        if head.content_length
            && declared_length(parts).is_some_and(|length| length > self.max_request_body)
        {
            return Err((
                ClientLimit::BodySize,
                ProxyError::BodyTooLarge {
                    limit: self.max_request_body,
                },
            ));
        }
        Ok(addressed)
    }

    /// Counts `refused` under its limit and returns its error.
    fn count(&self, (limit, error): Refused) -> ProxyError {
        self.counters.count(limit);
        error
    }

    /// The `Host` to send upstream on `route` when it preserves the client's:
    /// the `addressed` authority in canonical form, if the route's `hosts` or
    /// `server.hosts` list it. `None` when the route does not preserve `Host`
    /// (the origin client then sends the origin's own).
    ///
    /// # Errors
    /// [`ProxyError::MisdirectedRequest`] (421, counted as `host`) when the
    /// host is not listed, or the request named none.
    pub(super) fn preserved_host(
        &self,
        route: &Route,
        addressed: Option<&str>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        self.judge_preserved_host(route, addressed)
            .map_err(|refused| self.count(refused))
    }

    /// [`Admission::preserved_host`], counting nothing (see [`Admission::judge`]).
    pub(super) fn judge_preserved_host(
        &self,
        route: &Route,
        addressed: Option<&str>,
    ) -> Result<Option<HeaderValue>, Refused> {
        if !route.preserve_host {
            return Ok(None);
        }
        let listed = addressed.and_then(|addressed| {
            let HostPort { host, port } = host_port(addressed)?;
            let port = port.unwrap_or(80);
            route
                .hosts
                .iter()
                .chain(&self.listed_hosts)
                .any(|allowed| allowed.allows(host, port))
                .then(|| HeaderValue::from_str(&canonical_authority(addressed)).ok())
                .flatten()
        });
        listed
            .map(Some)
            .ok_or((ClientLimit::Host, ProxyError::MisdirectedRequest))
    }

    /// Counts, and returns, the refusal of a GET or HEAD that carries a body
    /// on a cacheable route.
    pub(super) fn body_on_cacheable_request(&self) -> ProxyError {
        self.counters.count(ClientLimit::Malformed);
        ProxyError::BadRequest("a GET or HEAD with a body cannot be answered from a shared cache")
    }

    /// `body` as a stream for the origin client that ends with
    /// [`BodyLimitExceeded`] as soon as it has grown past `max_request_body`,
    /// so an oversized body is never forwarded whole. The returned
    /// [`BodyCheck`] tells the caller afterwards whether that happened, or
    /// whether the client's body broke.
    pub(super) fn limit_body<B>(&self, body: B) -> (reqwest::Body, BodyCheck)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let limit = self.max_request_body;
        let counters = self.counters.clone();
        let check = BodyCheck::default();
        let flags = Arc::clone(&check.0);
        let mut received: u64 = 0;
        let limited = BodyDataStream::new(body).map(move |chunk| {
            let chunk = chunk.map_err(|error| {
                if flags.raise(&flags.broken) {
                    counters.count(ClientLimit::Malformed);
                }
                error.into()
            })?;
            received = received.saturating_add(chunk.len() as u64);
            if received > limit {
                if flags.raise(&flags.cut_off) {
                    counters.count(ClientLimit::BodySize);
                }
                return Err(BoxError::from(BodyLimitExceeded { limit }));
            }
            Ok::<_, BoxError>(chunk)
        });
        (reqwest::Body::wrap_stream(limited), check)
    }

    /// Resolves with the refusal a body [`limit_body`](Self::limit_body)
    /// handed out earns, as soon as it earns one (never, if it does not), so
    /// the request need not wait for the origin to notice the aborted upload.
    pub(super) async fn body_refused(&self, check: &BodyCheck) -> ProxyError {
        check.refused().await;
        self.body_refusal(check)
            .unwrap_or(ProxyError::BadRequest("the request body is malformed"))
    }

    /// The refusal a body [`limit_body`](Self::limit_body) handed out earned, if any.
    pub(super) fn body_refusal(&self, check: &BodyCheck) -> Option<ProxyError> {
        check.refusal(self.max_request_body)
    }

    fn allows(&self, authority: &Authority, scheme: Option<&Scheme>) -> bool {
        let default_port = if scheme == Some(&Scheme::HTTPS) {
            443
        } else {
            80
        };
        let port = authority.port_u16().unwrap_or(default_port);
        self.origin_host
            .iter()
            .chain(&self.listed_hosts)
            .any(|allowed| allowed.allows(authority.host(), port))
    }
}

/// [`addressed_by`] for a head not yet read.
#[cfg(test)]
fn addressed_authority(parts: &Parts) -> Result<Option<&str>, &'static str> {
    addressed_by(parts, &HeadLines::read(parts))
}

/// The authority a request addressed, validated (RFC 9112 §3.2 and §3.2.2,
/// RFC 9113 §8.3.1): an absolute-form target's or HTTP/2's `:authority`, else
/// the one `Host` (from the lines `head` found). `None` only for HTTP/1.0
/// without `Host`.
fn addressed_by<'a>(
    parts: &'a Parts,
    head: &HeadLines<'a>,
) -> Result<Option<&'a str>, &'static str> {
    if head.more_hosts {
        return Err("more than one Host header");
    }
    let host = match head.host {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|host| host_port(host).is_some())
                .ok_or("the Host header is not a valid host[:port]")?,
        ),
        None => None,
    };
    let target = parts.uri.authority().map(Authority::as_str);
    if let Some(target) = target
        && host_port(target).is_none()
    {
        return Err("the request target's authority is not a valid host[:port]");
    }
    if parts.version >= Version::HTTP_2 {
        // h2 hands over a request without `:path` (it insists only for
        // extended CONNECT) as an empty URI whose path reads `/`; every
        // other request must carry one (RFC 9113 §8.3.1). Without
        // `:authority` the URI is origin-form and its text shows whether the
        // path was there (clients nearly always send `:authority`, so the
        // allocation is off the common path).
        if parts.uri.authority().is_none() && parts.uri.to_string().is_empty() {
            return Err("an HTTP/2 request must carry :path");
        }
        return match (target, host) {
            (Some(target), Some(host)) if !target.eq_ignore_ascii_case(host) => {
                Err("the Host header disagrees with :authority")
            }
            (Some(authority), _) | (None, Some(authority)) => Ok(Some(authority)),
            (None, None) => Err("no :authority and no Host"),
        };
    }
    if host.is_none() && parts.version >= Version::HTTP_11 {
        return Err("an HTTP/1.1 request must carry a Host header");
    }
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    Ok(target.or(host))
}

/// A validated `host[:port]`, borrowed from the text it was read from.
struct HostPort<'a> {
    /// A reg-name, an IPv4 address, or a bracketed IPv6 literal.
    host: &'a str,
    /// The port, when the text named one.
    port: Option<u16>,
}

/// The bytes a `reg-name` may hold besides a percent-encoding (RFC 3986
/// §3.2.2: unreserved and sub-delims), as a table: every request's `Host`
/// is checked against it, byte by byte.
static REG_NAME: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        allowed[b] = c.is_ascii_alphanumeric() || {
            matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
        };
        b += 1;
    }
    allowed
};

/// Reads `text` as `host[:port]` (RFC 3986 §3.2.2 and §3.2.3, as RFC 9110
/// §7.2 uses them for `Host`), without allocating: every request's `Host`
/// passes here. The host is a non-empty reg-name (unreserved, sub-delims and
/// percent-encoded octets, so no user info, path, query or space) or a
/// bracketed IPv6 literal; then nothing, or `:` and a port that fits u16.
fn host_port(text: &str) -> Option<HostPort<'_>> {
    let bytes = text.as_bytes();
    let host_len = if bytes.first() == Some(&b'[') {
        let close = text.find(']')?;
        let literal = &bytes[1..close];
        let ipv6 = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
        (!literal.is_empty() && literal.iter().all(ipv6)).then_some(close + 1)?
    } else {
        // One pass up to the port's `:`; a `%` must lead two hex digits.
        let mut at = 0;
        while let Some(&b) = bytes.get(at) {
            if REG_NAME[usize::from(b)] {
                at += 1;
            } else if b == b'%'
                && bytes
                    .get(at + 1..at + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            {
                at += 3;
            } else if b == b':' {
                break;
            } else {
                return None;
            }
        }
        (at > 0).then_some(at)?
    };
    let (host, rest) = text.split_at(host_len);
    let port = match rest.as_bytes() {
        [] => None,
        [b':', digits @ ..] if !digits.is_empty() => {
            // Digits only (no sign, unlike `parse`), and no more than fit.
            let mut port: u16 = 0;
            for &digit in digits {
                if !digit.is_ascii_digit() {
                    return None;
                }
                port = port.checked_mul(10)?.checked_add(u16::from(digit - b'0'))?;
            }
            Some(port)
        }
        _ => return None,
    };
    Some(HostPort { host, port })
}

/// What admission reads off a request's header lines, in one walk over
/// them rather than a lookup per field.
struct HeadLines<'a> {
    /// What the head would take on the wire (request line and header lines),
    /// the size `max_header_size` bounds.
    size: u64,
    /// The first `Host` line.
    host: Option<&'a HeaderValue>,
    /// Whether another `Host` line followed it.
    more_hosts: bool,
    /// Whether a `Content-Length` line is there.
    content_length: bool,
}

impl<'a> HeadLines<'a> {
    fn read(parts: &'a Parts) -> HeadLines<'a> {
        let uri = &parts.uri;
        let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        let mut head = HeadLines {
            size: (parts.method.as_str().len() + target) as u64 + REQUEST_LINE_OVERHEAD,
            host: None,
            more_hosts: false,
            content_length: false,
        };
        for (name, value) in &parts.headers {
            head.size += name.as_str().len() as u64 + value.len() as u64 + HEADER_LINE_OVERHEAD;
            if name == header::HOST {
                head.more_hosts |= head.host.is_some();
                head.host.get_or_insert(value);
            } else if name == header::CONTENT_LENGTH {
                head.content_length = true;
            }
        }
        head
    }
}

/// The body length the client announced, if it announced a valid one.
pub(super) fn declared_length(parts: &Parts) -> Option<u64> {
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
mod tests;
