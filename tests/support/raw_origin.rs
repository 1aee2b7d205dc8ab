//! A bare-TCP HTTP/1.1 origin that records exactly what it receives, byte for
//! byte, so tests can prove that no request was smuggled through corral.
//!
//! Unlike [`corral::testing::mock_origin::MockOrigin`] it has no HTTP library between
//! the socket and the record: it splits the byte stream into requests the way
//! a plain HTTP/1.1 server would (head up to CRLFCRLF, body framed by
//! `Content-Length` or chunked `Transfer-Encoding`), so a request that corral
//! framed wrongly shows up as a request with someone else's bytes in its body,
//! or as garbage where the next head should have been.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Longest head (or chunk-size line) accepted before the bytes are treated as
/// garbage.
const MAX_HEAD: usize = 64 * 1024;

/// When the origin answers a request that declares a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// A strict origin: reads the whole declared body, then answers.
    ReadBodyThenAnswer,
    /// An origin that answers early (as many HTTP servers may): writes the reply
    /// right after the head, then reads and discards the declared body as the
    /// next bytes on the connection, recording them as that request's body.
    /// A dangling `Content-Length` therefore swallows the next pooled request.
    AnswerThenReadBody,
}

/// One request the origin parsed (or the garbage it found instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// Which accepted connection it arrived on, numbered from 0.
    pub connection: usize,
    /// The head as lossy UTF-8, without the terminating blank line (CRLFCRLF).
    /// For garbage that does not start with a valid request line, every byte
    /// buffered when the garbage was noticed.
    pub head: String,
    /// The body: the declared `Content-Length` bytes, or the decoded chunks.
    /// While the body is still arriving, or if the connection ended first,
    /// the part received so far.
    pub body: Vec<u8>,
    /// Whether the request arrived whole: its head and its entire declared
    /// body. False while the body is still arriving, when the connection
    /// ended first, when the framing was invalid, and for garbage.
    pub complete: bool,
}

/// A bare-TCP HTTP/1.1 origin on `127.0.0.1:0` that answers every request
/// with one fixed reply and records every byte and every request it sees.
/// Dropping it stops accepting and closes every connection.
pub struct RawOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// State shared between the handle and the connection tasks.
struct Shared {
    state: Mutex<State>,
    /// Woken each time a request is finished (see [`RawOrigin::wait_for_requests`]).
    finished: Notify,
}

#[derive(Default)]
struct State {
    requests: Vec<RawRequest>,
    /// Every byte received, one entry per accepted connection.
    raw: Vec<Vec<u8>>,
    /// Requests finished: whole, cut short by the connection ending, or garbage.
    finished: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide what the origin saw.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a new request and returns its index.
    fn begin(&self, connection: usize, head: String) -> usize {
        let mut state = self.lock();
        state.requests.push(RawRequest {
            connection,
            head,
            body: Vec::new(),
            complete: false,
        });
        state.requests.len() - 1
    }

    fn append_body(&self, request: usize, bytes: &[u8]) {
        self.lock().requests[request].body.extend_from_slice(bytes);
    }

    /// Marks `request` finished (`complete` if it arrived whole) and wakes waiters.
    fn finish(&self, request: usize, complete: bool) {
        {
            let mut state = self.lock();
            state.requests[request].complete = complete;
            state.finished += 1;
        }
        self.finished.notify_waiters();
    }
}

impl RawOrigin {
    /// Binds 127.0.0.1:0 and answers every request it parses with `reply`
    /// (the full raw response bytes, e.g.
    /// `b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok"`),
    /// keeping the connection open. Garbage where a request line should be is
    /// recorded as a [`RawRequest`] and the connection closed; so is a head
    /// whose body framing cannot be determined (an invalid or conflicting
    /// `Content-Length`, a `Transfer-Encoding` not ending in `chunked`), left
    /// unanswered.
    pub async fn start(mode: BodyMode, reply: &'static [u8]) -> RawOrigin {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind raw origin");
        let addr = listener.local_addr().expect("raw origin addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            finished: Notify::new(),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            // Owned here so that aborting the accept loop closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let connection = {
                    let mut state = accepting.lock();
                    state.raw.push(Vec::new());
                    state.raw.len() - 1
                };
                let conn = Conn {
                    stream,
                    buf: Vec::new(),
                    connection,
                    shared: Arc::clone(&accepting),
                };
                connections.spawn(conn.serve(mode, reply));
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        RawOrigin {
            addr,
            shared,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the origin listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request parsed so far (including garbage), in arrival order; a
    /// request whose body is still arriving is included with the body so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every byte received on accepted connection `connection` (numbered from 0).
    pub fn raw(&self, connection: usize) -> Vec<u8> {
        self.shared
            .lock()
            .raw
            .get(connection)
            .cloned()
            .unwrap_or_else(|| panic!("no connection {connection}"))
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.shared.lock().raw.len()
    }

    /// Waits until at least `n` requests are finished: read whole (head and
    /// body), cut short by the connection ending, or recorded as garbage.
    /// Woken by each one ([`Notify`]); never polls. Callers bound it with
    /// `tokio::time::timeout`.
    pub async fn wait_for_requests(&self, n: usize) {
        loop {
            let finished = self.shared.finished.notified();
            tokio::pin!(finished);
            // Registered before the check, so a request finishing in between
            // still wakes this waiter.
            finished.as_mut().enable();
            if self.shared.lock().finished >= n {
                return;
            }
            finished.await;
        }
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How a request's body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// The head declares a body whose length cannot be determined.
    Invalid,
}

/// Why a body could not be read whole.
enum Cut {
    /// The connection ended (or failed) first.
    Closed,
    /// The chunked framing was malformed.
    Malformed,
}

/// One accepted connection and the bytes read from it but not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    connection: usize,
    shared: Arc<Shared>,
}

impl Conn {
    /// Serves requests until the peer closes, garbage arrives, or framing fails.
    async fn serve(mut self, mode: BodyMode, reply: &'static [u8]) {
        loop {
            // Wait for the head, checking the request line as soon as it is in.
            let head_end = loop {
                if let Some(line_end) = find(&self.buf, b"\n")
                    && !valid_request_line(&self.buf[..=line_end])
                {
                    return self.garbage();
                }
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    break end;
                }
                if self.buf.len() > MAX_HEAD {
                    return self.garbage();
                }
                if !self.fill().await {
                    if !self.buf.is_empty() {
                        // Half a head, then the connection ended.
                        self.garbage();
                    }
                    return;
                }
            };
            let head_bytes: Vec<u8> = self.buf.drain(..head_end + 4).collect();
            let head = String::from_utf8_lossy(&head_bytes[..head_end]).into_owned();
            let framing = framing(&head);
            let request = self.shared.begin(self.connection, head);
            let has_body = !matches!(framing, Framing::None | Framing::Length(0));
            if matches!(framing, Framing::Invalid) {
                self.shared.finish(request, false);
                return;
            }
            if mode == BodyMode::AnswerThenReadBody && has_body {
                self.answer(reply).await;
            }
            let read = match framing {
                Framing::Length(length) => self.read_length(request, length).await,
                Framing::Chunked => self.read_chunked(request).await,
                Framing::None | Framing::Invalid => Ok(()),
            };
            match read {
                Ok(()) => self.shared.finish(request, true),
                Err(Cut::Closed | Cut::Malformed) => {
                    self.shared.finish(request, false);
                    return;
                }
            }
            if mode == BodyMode::ReadBodyThenAnswer || !has_body {
                self.answer(reply).await;
            }
        }
    }

    /// Records everything buffered as a garbage request; the caller then
    /// returns, closing the connection.
    fn garbage(&mut self) {
        let head = String::from_utf8_lossy(&self.buf).into_owned();
        let request = self.shared.begin(self.connection, head);
        self.shared.finish(request, false);
    }

    async fn answer(&mut self, reply: &[u8]) {
        // A peer that went away shows up as end of stream on the next read.
        let _ = self.stream.write_all(reply).await;
    }

    /// Reads more bytes into the buffer (and the connection's raw record);
    /// false once the connection has ended or failed.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.shared.lock().raw[self.connection].extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Moves up to `length` body bytes into `request` as they arrive.
    async fn read_length(&mut self, request: usize, length: u64) -> Result<(), Cut> {
        let mut remaining = length;
        while remaining > 0 {
            if self.buf.is_empty() && !self.fill().await {
                return Err(Cut::Closed);
            }
            let take = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let bytes: Vec<u8> = self.buf.drain(..take).collect();
            self.shared.append_body(request, &bytes);
            remaining -= take as u64;
        }
        Ok(())
    }

    /// Decodes a chunked body into `request`, then skips the trailer section.
    async fn read_chunked(&mut self, request: usize) -> Result<(), Cut> {
        loop {
            let line = self.line().await?;
            let size = chunk_size(&line).ok_or(Cut::Malformed)?;
            if size == 0 {
                // Trailer fields, up to the blank line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.read_length(request, size).await?;
            while self.buf.len() < 2 {
                if !self.fill().await {
                    return Err(Cut::Closed);
                }
            }
            if self.buf.drain(..2).as_slice() != b"\r\n" {
                return Err(Cut::Malformed);
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF. A bare LF, or a line
    /// longer than [`MAX_HEAD`], is malformed.
    async fn line(&mut self) -> Result<Vec<u8>, Cut> {
        loop {
            if let Some(lf) = find(&self.buf, b"\n") {
                if lf == 0 || self.buf[lf - 1] != b'\r' {
                    return Err(Cut::Malformed);
                }
                let line: Vec<u8> = self.buf.drain(..=lf).collect();
                return Ok(line[..lf - 1].to_vec());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Cut::Malformed);
            }
            if !self.fill().await {
                return Err(Cut::Closed);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `c` is an RFC 9110 `tchar` (a token character).
pub fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, with a token method and a
/// visible-ASCII target.
fn valid_request_line(line: &[u8]) -> bool {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return false;
    };
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|&c| is_tchar(c))
        && !target.is_empty()
        && target.iter().all(|&c| c.is_ascii_graphic())
        && (*version == b"HTTP/1.1" || *version == b"HTTP/1.0")
}

/// The body framing a head declares: chunked `Transfer-Encoding` wins over
/// `Content-Length` (RFC 9112 §6.3); header names match case-insensitively.
fn framing(head: &str) -> Framing {
    let mut transfer_encoding = None::<String>;
    let mut lengths = Vec::new();
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.extend(
                value
                    .split(',')
                    .map(|v| v.trim_matches([' ', '\t']).to_owned()),
            );
        }
    }
    if let Some(codings) = transfer_encoding {
        let last = codings
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim_matches([' ', '\t']);
        return if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::Invalid
        };
    }
    let mut parsed = lengths.iter().map(|v| {
        (!v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
    });
    match parsed.next() {
        None => Framing::None,
        Some(None) => Framing::Invalid,
        Some(Some(first)) => {
            if parsed.all(|v| v == Some(first)) {
                Framing::Length(first)
            } else {
                Framing::Invalid
            }
        }
    }
}

/// The size in a chunk-size line (hex digits, then optional `;extensions`);
/// `None` if it is not one or overflows.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits_end = line
        .iter()
        .position(|c| !c.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    let rest_ok = rest.is_empty()
        || rest
            .iter()
            .position(|&c| c != b' ' && c != b'\t')
            .is_some_and(|i| rest[i] == b';');
    if digits.is_empty() || !rest_ok {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}
