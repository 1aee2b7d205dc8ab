//! HTTP/1.1 on the wire, for the listener's quick path (see
//! [`crate::server`]): reading a *plain* request head straight off the
//! connection's buffer, and a response head encoded once, as bytes, so it can
//! be written for many requests without being built again.
//!
//! A plain head is the one case simple enough to read without hyper: an
//! origin-form GET or HEAD over HTTP/1.1 with no body framing and nothing
//! that changes the connection (see [`PlainHead::read`]). Anything else is
//! [`Head::Other`], and hyper reads it from the same bytes, so every
//! unusual or malformed request is judged by hyper alone, exactly as before.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, StatusCode, Uri, Version};

/// Most header lines a plain head may have; a head with more is
/// [`Head::Other`] (hyper allows 100).
pub const PLAIN_HEAD_LINES: usize = 32;

/// What the first bytes of a connection's buffer hold.
// A `Plain` head is read, used and dropped on one stack frame per request;
// boxing it would cost an allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Head {
    /// A complete plain request head, its bytes first in the buffer.
    Plain(PlainHead),
    /// Not all of a head yet; nothing about it rules out a plain one.
    Partial,
    /// A head that is not plain, or not valid: for hyper to read.
    Other,
}

/// Where a complete plain head's parts lie in the buffer it was read from.
#[derive(Debug)]
pub struct PlainHead {
    /// Bytes the head takes, its final CRLF included.
    pub len: usize,
    method: Method,
    target: Span,
    /// Each line's name and value.
    lines: [(Span, Span); PLAIN_HEAD_LINES],
    count: usize,
}

/// Where some bytes lie in the head: `start..end`. [`PlainHead::read`]
/// leaves a head longer than `u32::MAX` bytes to hyper, so offsets fit.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Request fields that make a head other than plain: body framing (a GET
/// with a body is for admission to refuse, and smuggling defences are
/// hyper's), and fields that change the connection rather than the request.
const NOT_PLAIN: [HeaderName; 7] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::EXPECT,
    header::TE,
    HeaderName::from_static("keep-alive"),
];

impl PlainHead {
    /// Reads the head at the start of `buf` with httparse (hyper's own
    /// parser, with hyper's strictness for requests). Plain means: complete,
    /// valid, `GET` or `HEAD`, an origin-form target (`/...`), `HTTP/1.1`, at
    /// most [`PLAIN_HEAD_LINES`] lines, none of them named in [`NOT_PLAIN`]
    /// (`Proxy-Connection` included, by prefix) or obsolete line folding.
    pub fn read(buf: &[u8]) -> Head {
        let mut parsed = [httparse::EMPTY_HEADER; PLAIN_HEAD_LINES];
        let mut request = httparse::Request::new(&mut parsed);
        let len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return match request.method {
                    // Already known not to be plain: no need to wait for the rest.
                    Some(method) if method != "GET" && method != "HEAD" => Head::Other,
                    _ => Head::Partial,
                };
            }
            Err(_) => return Head::Other,
        };
        let method = match request.method {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            _ => return Head::Other,
        };
        let (Some(path), Some(1)) = (request.path, request.version) else {
            return Head::Other;
        };
        if !path.starts_with('/') {
            return Head::Other;
        }
        if u32::try_from(len).is_err() {
            return Head::Other;
        }
        let base = buf.as_ptr() as usize;
        // Within the head, so within `u32` (checked above).
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            Span {
                start: start as u32,
                end: (start + part.len()) as u32,
            }
        };
        let mut lines = [(Span::default(), Span::default()); PLAIN_HEAD_LINES];
        let count = request.headers.len();
        for (slot, line) in lines.iter_mut().zip(request.headers.iter()) {
            let name = line.name.as_bytes();
            if NOT_PLAIN
                .iter()
                .any(|not| name.eq_ignore_ascii_case(not.as_str().as_bytes()))
                || name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-")
            {
                return Head::Other;
            }
            *slot = (at(name), at(line.value));
        }
        Head::Plain(PlainHead {
            len,
            method,
            target: at(path.as_bytes()),
            lines,
            count,
        })
    }

    /// [`PlainHead::read`], for a buffer that grows a read at a time:
    /// `scanned` is how far an earlier call found no end of a head (0 for a
    /// new head), and the head is parsed only once the bytes after that hold
    /// one, so a head trickled in byte by byte is parsed once, not once per
    /// byte. A buffer whose first line cannot start a GET or HEAD is
    /// [`Head::Other`] at once.
    pub fn read_from(buf: &[u8], scanned: &mut usize) -> Head {
        if !may_be_plain(buf) {
            return Head::Other;
        }
        // An end of head (LF CRLF, or LF LF) may straddle the last read.
        let unseen = buf.get(scanned.saturating_sub(2)..).unwrap_or_default();
        *scanned = buf.len();
        let ended = unseen.windows(2).any(|pair| pair == b"\n\n")
            || unseen.windows(3).any(|three| three == b"\n\r\n");
        if ended {
            PlainHead::read(buf)
        } else {
            Head::Partial
        }
    }

    /// The head as hyper would hand it to a service, its values sharing
    /// `head`'s bytes (the buffer's first [`PlainHead::len`] bytes). `None`
    /// when the target or a line is not one `http` accepts (the request is
    /// then for hyper, which refuses it).
    pub fn parts(&self, head: &Bytes) -> Option<Parts> {
        // Every span lies within the head's bytes: slicing cannot panic.
        if head.len() < self.len {
            return None;
        }
        let uri = Uri::from_maybe_shared(head.slice(self.target.range())).ok()?;
        let mut headers = HeaderMap::with_capacity(self.count);
        for (name, value) in &self.lines[..self.count] {
            let name = HeaderName::from_bytes(&head[name.range()]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(value.range())).ok()?;
            headers.append(name, value);
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        parts.headers = headers;
        Some(parts)
    }
}

/// Whether `buf`, after at most two empty lines (which httparse skips;
/// RFC 9112 §2.2 asks servers to ignore at least one), could begin with
/// `GET ` or `HEAD `.
fn may_be_plain(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|byte| *byte != b'\r' && *byte != b'\n')
        .unwrap_or(buf.len());
    if start > 4 {
        return false;
    }
    let line = buf.get(start..).unwrap_or_default();
    [&b"GET "[..], &b"HEAD "[..]].iter().any(|method| {
        let common = line.len().min(method.len());
        line.get(..common) == method.get(..common)
    })
}

/// A whole response in HTTP/1.1 wire form: its head, then its body.
#[derive(Debug, Clone)]
pub struct WireResponse {
    /// Status line, header lines and the blank line, as sent.
    pub head: Bytes,
    /// The body, sent after the head as it is (empty for HEAD).
    pub body: Bytes,
}

/// `status` and `headers` as an HTTP/1.1 response head, byte for byte what
/// hyper writes for them (names as stored, lower case; lines in the map's
/// order). `None` for a status without a canonical reason phrase, which
/// hyper spells its own way.
pub fn encode_head(status: StatusCode, headers: &HeaderMap) -> Option<Bytes> {
    let reason = status.canonical_reason()?;
    let size = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + 32;
    let mut head = BytesMut::with_capacity(size);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(reason.as_bytes());
    head.put_slice(b"\r\n");
    for (name, value) in headers {
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"\r\n");
    Some(head.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(raw: &str) -> (PlainHead, Parts) {
        let bytes = Bytes::copy_from_slice(raw.as_bytes());
        let Head::Plain(head) = PlainHead::read(&bytes) else {
            panic!("not plain: {raw:?}");
        };
        let parts = head.parts(&bytes.slice(..head.len)).expect("valid parts");
        (head, parts)
    }

    #[test]
    fn a_plain_get_is_read_as_hyper_would_hand_it_over() {
        let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.COM\r\nAccept: */*\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next";
        let (head, parts) = plain(raw);
        assert_eq!(head.len, raw.find("GET /next").unwrap());
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "/a/b?x=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "Example.COM");
        let twos: Vec<_> = parts.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(parts.headers.len(), 4);
    }

    #[test]
    fn an_unfinished_head_waits_for_more_unless_it_cannot_be_plain() {
        assert!(matches!(
            PlainHead::read(b"GET /a HTTP/1.1\r\nHost: x\r\n"),
            Head::Partial
        ));
        assert!(matches!(PlainHead::read(b"GE"), Head::Partial));
        assert!(matches!(
            PlainHead::read(b"POST /a HTTP/1.1\r\n"),
            Head::Other
        ));
    }

    #[test]
    fn anything_but_a_plain_head_is_left_to_hyper() {
        for raw in [
            "POST /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nKeep-Alive: 5\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nProxy-Connection: close\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                !matches!(PlainHead::read(raw.as_bytes()), Head::Plain(_)),
                "{raw:?} read as plain"
            );
        }
    }

    #[test]
    fn a_growing_head_is_parsed_once_it_has_ended() {
        let raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut scanned = 0;
        for end in 1..raw.len() {
            assert!(
                matches!(
                    PlainHead::read_from(&raw[..end], &mut scanned),
                    Head::Partial
                ),
                "{end}"
            );
            assert_eq!(scanned, end);
        }
        assert!(matches!(
            PlainHead::read_from(raw, &mut scanned),
            Head::Plain(_)
        ));
        // Bare LF line ends, as httparse (and hyper) accept them.
        let mut scanned = 0;
        let bare = b"GET /a HTTP/1.1\nHost: x\n\n";
        assert!(matches!(
            PlainHead::read_from(&bare[..20], &mut scanned),
            Head::Partial
        ));
        assert!(matches!(
            PlainHead::read_from(bare, &mut scanned),
            Head::Plain(_)
        ));
    }

    #[test]
    fn a_head_that_cannot_start_a_get_or_head_is_left_to_hyper_at_once() {
        for raw in [
            "P",
            "POST ",
            "GETX",
            "HEADER",
            "\r\nPUT",
            "get /",
            "\r\n\r\n\r\n",
        ] {
            let mut scanned = 0;
            assert!(
                matches!(
                    PlainHead::read_from(raw.as_bytes(), &mut scanned),
                    Head::Other
                ),
                "{raw:?}"
            );
        }
        for raw in ["G", "GE", "HEA", "\r\n", "\r\nGET /"] {
            let mut scanned = 0;
            assert!(
                matches!(
                    PlainHead::read_from(raw.as_bytes(), &mut scanned),
                    Head::Partial
                ),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_head_with_too_many_lines_is_left_to_hyper() {
        let mut raw = String::from("GET /a HTTP/1.1\r\n");
        for n in 0..=PLAIN_HEAD_LINES {
            raw.push_str(&format!("X-{n}: {n}\r\n"));
        }
        raw.push_str("\r\n");
        assert!(matches!(PlainHead::read(raw.as_bytes()), Head::Other));
    }

    #[test]
    fn a_head_is_encoded_as_hyper_writes_it() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-two", HeaderValue::from_static("1"));
        headers.append("x-two", HeaderValue::from_static("2"));
        let head = encode_head(StatusCode::NOT_FOUND, &headers).unwrap();
        assert_eq!(
            &head[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
        assert!(encode_head(StatusCode::from_u16(299).unwrap(), &headers).is_none());
    }
}
