//! Request smuggling and desync attempts, over real loopback sockets.
//!
//! Each payload is written verbatim to corral over a raw `TcpStream`, with a
//! `GET /smuggled` request embedded where one of two disagreeing parsers would
//! see the start of the next request. Corral sits in front of a [`RawOrigin`]
//! that splits its byte stream into requests like a plain HTTP/1.1 server, so
//! anything corral framed wrongly shows up there: a `/smuggled` head, garbage
//! where a head should be, or a later request swallowed into a body.
//!
//! For every invalid payload, corral must answer 400 and close the connection
//! (RFC 9112 §6.3: invalid framing is unrecoverable; the server answers 400
//! and closes), or close it without answering. Afterwards the origin must have
//! received no `/smuggled` request, only well-formed heads, and no request
//! the client did not send whole; and corral must still serve a fresh
//! connection.
//!
//! A few framings are not invalid: RFC 9112 lets a recipient read them one
//! way ([`Reading::Permitted`] names the clause), and hyper, corral's parser,
//! does. Corral re-frames everything it forwards, so the origin cannot read
//! them another way: it must see exactly corral's reading, as whole,
//! well-framed requests, and nothing else. Each payload runs against a fresh corral and origin, once per
//! [`BodyMode`]: a strict origin, and one that answers before reading the body
//! (which turns a dangling `Content-Length` into a swallowed request).
//!
//! Nothing sleeps: waits are on sockets and the origin's request counter,
//! bounded by `tokio::time::timeout` only as a failure bound.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use support::Setup;
use support::raw_client::{find, status_of};
use support::raw_origin::{BodyMode, RawOrigin, RawRequest, is_tchar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Failure bound on any single wait; never a speed claim.
const BOUND: Duration = Duration::from_secs(5);

/// What the origin answers to everything: cacheable, two bytes.
const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok";

/// A caching route and a pass-through route.
const ROUTES: &str = r#"
[[route]]
match = "/cached/"
ttl = "60s"
[[route]]
match = "/pass/"
cache = false
"#;

/// The request every payload tries to sneak past corral.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// How many payloads of a family run at once (each with its own corral and origin).
const PARALLEL: usize = 8;

/// One hostile payload: a name for failure messages, the exact bytes sent,
/// and how corral must read them.
struct Payload {
    name: String,
    bytes: Vec<u8>,
    reading: Reading,
}

/// How corral must treat a payload.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// Invalid framing: 400 and a close (or just a close), nothing of it whole
    /// at the origin, no `/smuggled` request.
    Refused,
    /// A framing RFC 9112 lets a recipient accept, read as the clause says.
    Permitted {
        /// The clause that allows it.
        rfc: &'static str,
        /// What that reading makes of the bytes after the first body.
        rest: Rest,
    },
}

/// What a permitted reading makes of the bytes after the first request's body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rest {
    /// Nothing: `Transfer-Encoding` overrides `Content-Length`, and the
    /// connection closes after the one response (RFC 9112 §6.1), so nothing
    /// after the chunked body is read as a request.
    Discarded,
    /// A request of its own, sent whole after the first, as any pipelined
    /// request: it reaches the origin as its own whole, bodiless request.
    Pipelined,
}

/// Marks the `POST /pass/` variant of payload `name` as read the way `rfc`
/// allows (the `GET /cached/` variant carries a body, so it is refused).
fn permit_on_pass(table: &mut [Payload], name: &str, rfc: &'static str, rest: Rest) {
    let full = format!("{name} (POST /pass/)");
    let payload = table
        .iter_mut()
        .find(|p| p.name == full)
        .unwrap_or_else(|| panic!("no payload named {full:?}"));
    payload.reading = Reading::Permitted { rfc, rest };
}

/// A request with a well-formed request line and `Host`, then `headers` (each
/// a full line, without CRLF), the blank line, and `body` verbatim.
fn request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut bytes = format!("{method} {path} HTTP/1.1\r\nHost: corral.test\r\n");
    for header in headers {
        bytes.push_str(header);
        bytes.push_str("\r\n");
    }
    bytes.push_str("\r\n");
    bytes.push_str(body);
    bytes.into_bytes()
}

/// The same payload as a `POST /pass/{slug}` and as a `GET /cached/{slug}`.
fn on_both_routes(
    table: &mut Vec<Payload>,
    name: &str,
    slug: &str,
    build: impl Fn(&str, &str) -> Vec<u8>,
) {
    table.push(Payload {
        name: format!("{name} (POST /pass/)"),
        bytes: build("POST", &format!("/pass/{slug}")),
        reading: Reading::Refused,
    });
    table.push(Payload {
        name: format!("{name} (GET /cached/)"),
        bytes: build("GET", &format!("/cached/{slug}")),
        reading: Reading::Refused,
    });
}

/// How a raw connection ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Orderly close (FIN).
    Closed,
    /// Reset or read error.
    Reset,
    /// Still open when the bound expired.
    StillOpen,
}

/// Everything a raw client received on one connection.
#[derive(Debug)]
struct Answer {
    bytes: Vec<u8>,
    end: End,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        status_of(&self.bytes)
    }

    /// How many status lines (responses) arrived. Bodies here are the
    /// origin's two-byte "ok" or corral's short error text, so a status line
    /// is found wherever it starts, even right after a body.
    fn responses(&self) -> usize {
        self.bytes
            .windows(9)
            .filter(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")
            .count()
    }

    /// The body of the first response, taken as everything after its head.
    fn body(&self) -> &[u8] {
        find(&self.bytes, b"\r\n\r\n").map_or(&[], |end| &self.bytes[end + 4..])
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self
            .status()
            .map_or("no status".to_owned(), |s| s.to_string());
        write!(
            f,
            "{status}, {:?}, bytes {:?}",
            self.end,
            String::from_utf8_lossy(&self.bytes)
        )
    }
}

/// Connects to `addr`, writes `bytes`, and reads until the server closes the
/// connection or [`BOUND`] expires. A server that refuses early may close
/// before taking every byte, so a failed write is not an error.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect to corral");
    let _ = stream.write_all(bytes).await;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = timeout(BOUND, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return End::Closed,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(_) => return End::Reset,
            }
        }
    })
    .await
    .unwrap_or(End::StillOpen);
    Answer {
        bytes: received,
        end,
    }
}

/// What is wrong with corral's answer to a hostile payload, if anything: it
/// must be one 400 and a close, or a close without any answer.
fn answer_problem(answer: &Answer) -> Option<String> {
    if answer.end == End::StillOpen {
        return Some(format!(
            "connection neither refused nor closed within {BOUND:?}: {answer}"
        ));
    }
    if answer.bytes.is_empty() {
        // Closed (or reset) without answering anything: refused, no 2xx.
        return None;
    }
    if answer.status() != Some(400) {
        return Some(format!("expected 400 then close, got {answer}"));
    }
    if answer.responses() != 1 {
        return Some(format!(
            "more than one response on the connection (the rest of the payload was served): {answer}"
        ));
    }
    None
}

/// What is wrong with one head the origin received, if anything: it must be a
/// well-formed HTTP/1.1 request head with unambiguous framing.
fn head_problem(head: &str) -> Option<String> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    match parts.as_slice() {
        [method, target, "HTTP/1.1"]
            if !method.is_empty()
                && method.bytes().all(is_tchar)
                && target.starts_with('/')
                && target.bytes().all(|c| c.is_ascii_graphic()) => {}
        _ => return Some(format!("malformed request line {request_line:?}")),
    }
    let (mut lengths, mut codings) = (Vec::new(), Vec::new());
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Some(format!("header line without a colon: {line:?}"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Some(format!("malformed header name in {line:?}"));
        }
        if value
            .chars()
            .any(|c| (c.is_ascii_control() && c != '\t') || c == '\u{fffd}')
        {
            return Some(format!("control or invalid byte in header {line:?}"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(value.trim());
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(value.trim());
        }
    }
    if !lengths.is_empty() && !codings.is_empty() {
        return Some("both Content-Length and Transfer-Encoding".to_owned());
    }
    if lengths.len() > 1 || codings.len() > 1 {
        return Some("repeated framing header".to_owned());
    }
    if lengths
        .iter()
        .any(|v| v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()))
    {
        return Some(format!("invalid Content-Length {lengths:?}"));
    }
    if codings.iter().any(|v| !v.eq_ignore_ascii_case("chunked")) {
        return Some(format!("Transfer-Encoding other than chunked {codings:?}"));
    }
    None
}

/// The plain requests sent after each payload, as the origin sees them.
const PROBES: [&str; 2] = [
    "GET /cached/ok HTTP/1.1\r\n",
    "GET /pass/probe HTTP/1.1\r\n",
];

fn is_probe(request: &RawRequest) -> bool {
    PROBES.iter().any(|p| request.head.starts_with(p))
}

/// What is wrong with what the origin received, if anything.
fn origin_problems(requests: &[RawRequest]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        if request.head.to_ascii_lowercase().contains("smuggled") {
            problems.push(format!("request #{i} is the smuggled one: {request:?}"));
        }
        if let Some(problem) = head_problem(&request.head) {
            problems.push(format!("request #{i}: {problem}: {request:?}"));
        }
        // The payload was refused, so it is not a request the client sent whole;
        // a head corral started streaming before finding the body bad may show
        // up cut short, but never completed.
        if request.complete && !is_probe(request) {
            problems.push(format!(
                "request #{i} reached the origin whole though the client's was refused: {request:?}"
            ));
        }
        if is_probe(request) && !request.body.is_empty() {
            problems.push(format!(
                "probe #{i} arrived with a body (bytes of another request): {request:?}"
            ));
        }
    }
    for probe in PROBES {
        let intact = requests
            .iter()
            .any(|r| r.head.starts_with(probe) && r.complete && r.body.is_empty());
        if !intact {
            problems.push(format!("probe {probe:?} never reached the origin intact"));
        }
    }
    problems
}

/// What is wrong with corral's handling of a payload it may read as `rest`
/// says, if anything: the client gets one answer per request of that reading,
/// and the origin exactly those requests, whole and well framed.
fn permitted_problems(answer: &Answer, requests: &[RawRequest], rest: Rest) -> Vec<String> {
    let mut problems = Vec::new();
    let payload: Vec<&RawRequest> = requests.iter().filter(|r| !is_probe(r)).collect();
    for request in &payload {
        if let Some(problem) = head_problem(&request.head) {
            problems.push(format!("{problem}: {request:?}"));
        }
        if !request.complete {
            problems.push(format!(
                "a request of the permitted reading arrived broken: {request:?}"
            ));
        }
    }
    let smuggled: Vec<&&RawRequest> = payload
        .iter()
        .filter(|r| r.head.starts_with("GET /smuggled "))
        .collect();
    match rest {
        Rest::Discarded => {
            if answer.end != End::Closed || answer.responses() != 1 {
                problems.push(format!("expected one answer, then a close: {answer}"));
            }
            if payload.len() != 1 || !smuggled.is_empty() {
                problems.push(format!(
                    "expected the one chunked request only: {payload:#?}"
                ));
            }
        }
        Rest::Pipelined => {
            if answer.responses() != 2 {
                problems.push(format!(
                    "expected an answer to each of the two requests: {answer}"
                ));
            }
            let first_is_hello = payload.first().is_some_and(|r| r.body == b"hello");
            let second_is_whole = smuggled.len() == 1 && smuggled[0].body.is_empty();
            if payload.len() != 2 || !first_is_hello || !second_is_whole {
                problems.push(format!(
                    "expected the request with body \"hello\", then the pipelined GET: {payload:#?}"
                ));
            }
        }
    }
    problems
}

/// Checks one payload against a fresh origin in `mode` and a fresh corral;
/// `Ok` summarises what happened, `Err` describes everything that went wrong.
async fn check(mode: BodyMode, payload: &Payload) -> Result<String, String> {
    let origin = RawOrigin::start(mode, REPLY).await;
    let corral = Setup::url(origin.url()).toml(ROUTES).start().await;

    // A GET on the caching route finds its key stored, so the listener's
    // quick path, which answers fresh hits before hyper, sees the payload
    // first: it must leave every one of them to hyper.
    let warmed = warm_up_line(&payload.bytes);
    if let Some(line) = &warmed {
        let warm = format!("{line}Host: corral.test\r\nConnection: close\r\n\r\n");
        let seen = exchange(corral.addr, warm.as_bytes()).await;
        if seen.status() != Some(200) {
            return Err(format!("warming {line:?} got {seen}"));
        }
    }

    let answer = exchange(corral.addr, &payload.bytes).await;
    if let Reading::Permitted { rest, .. } = payload.reading {
        // Every request the client sent has been answered; what reached the
        // origin is final.
        origin
            .wait_for_requests(if rest == Rest::Pipelined { 2 } else { 1 })
            .await;
    }
    let mut problems: Vec<String> = match payload.reading {
        Reading::Refused => answer_problem(&answer).into_iter().collect(),
        Reading::Permitted { .. } => Vec::new(),
    };

    // Corral still works, on fresh connections, through the origin connections
    // the payload may have left in the pool.
    for (path, what) in [("/cached/ok", "cached"), ("/pass/probe", "pass")] {
        let probe =
            format!("GET {path} HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n");
        let seen = exchange(corral.addr, probe.as_bytes()).await;
        if seen.status() != Some(200) || seen.body() != b"ok" {
            problems.push(format!("{what} probe GET {path} afterwards got {seen}"));
        }
    }

    let mut requests = origin.requests();
    if let Some(line) = &warmed {
        // The warm-up's own fetch, the first request the origin saw.
        if requests
            .first()
            .is_some_and(|r| r.head.starts_with(line.as_str()) && r.complete)
        {
            requests.remove(0);
        } else {
            problems.push(format!(
                "the warm-up {line:?} did not reach the origin first"
            ));
        }
    }
    match payload.reading {
        Reading::Refused => problems.extend(origin_problems(&requests)),
        Reading::Permitted { rest, .. } => {
            problems.extend(permitted_problems(&answer, &requests, rest));
        }
    }
    drop(corral);
    if problems.is_empty() {
        let cut_short = requests.iter().filter(|r| !is_probe(r)).count();
        let status = answer
            .status()
            .map_or("no answer".to_owned(), |s| s.to_string());
        let reading = match payload.reading {
            Reading::Refused => String::new(),
            Reading::Permitted { rfc, rest } => format!(" (read as {rfc} allows: {rest:?})"),
        };
        Ok(format!(
            "{status}, {:?}; {cut_short} request(s) at the origin{reading}",
            answer.end
        ))
    } else {
        Err(format!(
            "[{mode:?}] {}\n  payload: {:?}\n  client saw: {answer}\n  problems:\n    - {}\n  origin received ({} connections): {:#?}",
            payload.name,
            String::from_utf8_lossy(&payload.bytes),
            problems.join("\n    - "),
            origin.connections(),
            origin.requests(),
        ))
    }
}

/// The request line (with its CRLF) of a payload that is a GET on the
/// caching route, for a plain request that stores its key first.
fn warm_up_line(payload: &[u8]) -> Option<String> {
    let line = &payload[..find(payload, b"\r\n")?];
    let line = std::str::from_utf8(line).ok()?;
    let target = line
        .strip_prefix("GET /cached/")?
        .strip_suffix(" HTTP/1.1")?;
    let plain = target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    plain.then(|| format!("{line}\r\n"))
}

/// Runs every payload of a family in both origin modes; panics listing each
/// one that was not refused cleanly, or that reached the origin.
async fn assert_all_refused(family: &str, table: Vec<Payload>) {
    let runs: Vec<(BodyMode, &Payload)> =
        [BodyMode::ReadBodyThenAnswer, BodyMode::AnswerThenReadBody]
            .into_iter()
            .flat_map(|mode| table.iter().map(move |payload| (mode, payload)))
            .collect();
    let total = runs.len();
    let results: Vec<(String, Result<String, String>)> = futures_util::stream::iter(runs)
        .map(|(mode, payload)| async move {
            (
                format!("[{mode:?}] {}", payload.name),
                check(mode, payload).await,
            )
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut failures = Vec::new();
    for (name, result) in results {
        match result {
            Ok(summary) => eprintln!("ok    {name}: {summary}"),
            Err(report) => {
                eprintln!("FAIL  {name}");
                failures.push(report);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{family}: {} of {total} payload runs failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Why a request carrying both framing headers may be read by its chunks.
const TE_OVERRIDES_CL: &str =
    "RFC 9112 §6.1 (Transfer-Encoding overrides Content-Length; the connection closes after)";

/// A chunked body that ends at once, followed by the smuggled request.
fn empty_chunked_then_smuggled() -> String {
    format!("0\r\n\r\n{SMUGGLED}")
}

/// A chunked body whose single chunk is the smuggled request.
fn smuggled_as_chunk() -> String {
    format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len())
}

#[tokio::test]
async fn cl_te_conflicts_are_refused_and_never_smuggled() {
    // Content-Length spans everything; chunked ends after "0\r\n\r\n", so a
    // parser honouring Transfer-Encoding sees the smuggled request next.
    let body = empty_chunked_then_smuggled();
    let length = format!("Content-Length: {}", body.len());
    let mut table = Vec::new();
    on_both_routes(&mut table, "CL then TE", "cl-te", |method, path| {
        request(
            method,
            path,
            &[&length, "Transfer-Encoding: chunked"],
            &body,
        )
    });
    on_both_routes(&mut table, "TE then CL", "te-first", |method, path| {
        request(
            method,
            path,
            &["Transfer-Encoding: chunked", &length],
            &body,
        )
    });
    for name in ["CL then TE", "TE then CL"] {
        permit_on_pass(&mut table, name, TE_OVERRIDES_CL, Rest::Discarded);
    }
    assert_all_refused("CL.TE", table).await;
}

#[tokio::test]
async fn te_cl_conflicts_are_refused_and_never_smuggled() {
    // Chunked carries the smuggled request as data; Content-Length covers only
    // the chunk-size line, so a parser honouring it sees the smuggled request next.
    let body = smuggled_as_chunk();
    let size_line = format!("Content-Length: {}", body.find("\r\n").unwrap() + 2);
    let mut table = Vec::new();
    on_both_routes(&mut table, "TE then short CL", "te-cl", |method, path| {
        request(
            method,
            path,
            &["Transfer-Encoding: chunked", &size_line],
            &body,
        )
    });
    on_both_routes(
        &mut table,
        "short CL then TE",
        "cl-first",
        |method, path| {
            request(
                method,
                path,
                &[&size_line, "Transfer-Encoding: chunked"],
                &body,
            )
        },
    );
    // Content-Length: 0 beside chunked: one parser sees no body at all.
    on_both_routes(&mut table, "TE with CL 0", "te-cl0", |method, path| {
        request(
            method,
            path,
            &["Content-Length: 0", "Transfer-Encoding: chunked"],
            &body,
        )
    });
    for name in ["TE then short CL", "short CL then TE", "TE with CL 0"] {
        permit_on_pass(&mut table, name, TE_OVERRIDES_CL, Rest::Discarded);
    }
    assert_all_refused("TE.CL", table).await;
}

#[tokio::test]
async fn obfuscated_transfer_encodings_are_refused_and_never_smuggled() {
    let body = empty_chunked_then_smuggled();
    let length = format!("Content-Length: {}", body.len());
    // Each obfuscation as the header line(s) standing for Transfer-Encoding.
    let obfuscations: [(&str, &str, &[&str]); 8] = [
        ("xchunked", "x", &["Transfer-Encoding: xchunked"]),
        (
            "space before colon",
            "space-colon",
            &["Transfer-Encoding : chunked"],
        ),
        (
            "chunked, identity",
            "chunked-identity",
            &["Transfer-Encoding: chunked, identity"],
        ),
        (
            "two TE lines chunked + identity",
            "two-te",
            &["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
        ),
        (
            "tab-padded chunked",
            "tab",
            &["Transfer-Encoding:\tchunked\t"],
        ),
        (
            "vertical-tab before chunked",
            "vtab",
            &["Transfer-Encoding:\x0bchunked"],
        ),
        (
            "vertical-tab after chunked",
            "vtab-after",
            &["Transfer-Encoding: chunked\x0b"],
        ),
        ("identity", "identity", &["Transfer-Encoding: identity"]),
    ];
    let mut table = Vec::new();
    for (name, slug, lines) in obfuscations {
        // Beside a Content-Length spanning the chunked body and the smuggled request.
        on_both_routes(
            &mut table,
            &format!("{name} with CL"),
            slug,
            |method, path| {
                let mut headers = vec![length.as_str()];
                headers.extend_from_slice(lines);
                request(method, path, &headers, &body)
            },
        );
        // Alone: a parser ignoring the obfuscated header sees no body, then
        // "0" and the smuggled request as the next requests. (Tab-padded
        // "chunked" alone is valid, so it is tested beside a CL only.)
        if slug != "tab" {
            on_both_routes(
                &mut table,
                &format!("{name} alone"),
                slug,
                |method, path| request(method, path, lines, &body),
            );
        }
    }
    // Tab is whitespace around a field value (RFC 9110 §5.5): this is plain
    // `chunked` beside a Content-Length.
    permit_on_pass(
        &mut table,
        "tab-padded chunked with CL",
        TE_OVERRIDES_CL,
        Rest::Discarded,
    );
    assert_all_refused("obfuscated Transfer-Encoding", table).await;
}

#[tokio::test]
async fn malformed_or_duplicate_content_lengths_are_refused_and_never_smuggled() {
    // "hello" is the body under the first value; the smuggled request follows.
    let body = format!("hello{SMUGGLED}");
    let long = format!("Content-Length: {}", body.len());
    // RFC 9110 §8.6 lets a recipient merge identical values, but a front proxy
    // that merges disagrees with any origin that does not: corral refuses.
    let cases: [(&str, &str, Vec<&str>); 9] = [
        (
            "duplicate CL, same value",
            "dup-same",
            vec!["Content-Length: 5", "Content-Length: 5"],
        ),
        (
            "duplicate CL, different values",
            "dup-diff",
            vec!["Content-Length: 5", &long],
        ),
        (
            "duplicate CL, long value first",
            "dup-diff-rev",
            vec![&long, "Content-Length: 5"],
        ),
        (
            "CL list of same values",
            "list-same",
            vec!["Content-Length: 5, 5"],
        ),
        ("CL list 5, 6", "list", vec!["Content-Length: 5, 6"]),
        ("CL +5", "plus", vec!["Content-Length: +5"]),
        ("CL -5", "minus", vec!["Content-Length: -5"]),
        ("CL with leading junk", "junk", vec!["Content-Length: x5"]),
        ("CL hex 0x5", "hex", vec!["Content-Length: 0x5"]),
    ];
    let mut table = Vec::new();
    for (name, slug, headers) in &cases {
        on_both_routes(&mut table, name, slug, |method, path| {
            request(method, path, headers, &body)
        });
    }
    permit_on_pass(
        &mut table,
        "duplicate CL, same value",
        "RFC 9110 §8.6 (identical Content-Length lines may be taken as one)",
        Rest::Pipelined,
    );
    assert_all_refused("Content-Length", table).await;
}

#[tokio::test]
async fn malformed_chunk_sizes_and_extensions_are_refused_and_never_smuggled() {
    // Each chunked body is followed by the smuggled request; a lenient chunk
    // parser that guesses a size ends the body somewhere else.
    let bodies: [(&str, &str, &str); 8] = [
        ("chunk size 5x", "5x", "5x\r\nhello\r\n0\r\n\r\n"),
        ("chunk size 0x5", "0x5", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "negative chunk size",
            "negative",
            "-5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "overflowing chunk size",
            "overflow",
            "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension ended by a bare LF",
            "ext-lf",
            "5;a=b\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension with a CRLF in a quoted string",
            "ext-quoted",
            "5;a=\"\r\n\"\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk data longer than its size",
            "overrun",
            "3\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size line ended by a bare LF",
            "size-lf",
            "5\nhello\r\n0\r\n\r\n",
        ),
    ];
    let mut table = Vec::new();
    for (name, slug, chunks) in bodies {
        let body = format!("{chunks}{SMUGGLED}");
        on_both_routes(&mut table, name, slug, |method, path| {
            request(method, path, &["Transfer-Encoding: chunked"], &body)
        });
    }
    assert_all_refused("chunk syntax", table).await;
}

#[tokio::test]
async fn malformed_header_syntax_is_refused_and_never_smuggled() {
    let body = format!("hello{SMUGGLED}");
    // (name, slug, head lines after the request line, joined by CRLF unless
    // they carry their own terminators, then the blank line and `body`).
    let heads: [(&str, &str, &str); 9] = [
        (
            "bare LF line endings",
            "lf",
            "Host: corral.test\nContent-Length: 5\n\n",
        ),
        (
            "bare LF hiding a Transfer-Encoding line",
            "lf-te",
            "Host: corral.test\r\nX-Note: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "obs-fold continuation line",
            "fold",
            "Host: corral.test\r\nX-Note: a\r\n b\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "obs-fold of Transfer-Encoding",
            "fold-te",
            "Host: corral.test\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n\tchunked\r\n\r\n",
        ),
        (
            "NUL in a header value",
            "nul",
            "Host: corral.test\r\nX-Note: a\0b\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "bare CR in a header value",
            "cr",
            "Host: corral.test\r\nX-Note: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "space inside a header name",
            "space-name",
            "Host: corral.test\r\nTransfer Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "space inside Content-Length's name",
            "space-cl",
            "Host: corral.test\r\nContent Length: 5\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "bare LF ending the request line",
            "lf-line",
            "Host: corral.test\r\nContent-Length: 5\r\n\r\n",
        ),
    ];
    let mut table = Vec::new();
    for (name, slug, head) in heads {
        on_both_routes(&mut table, name, slug, |method, path| {
            let line_end = if slug == "lf-line" || slug == "lf" {
                "\n"
            } else {
                "\r\n"
            };
            format!("{method} {path} HTTP/1.1{line_end}{head}{body}").into_bytes()
        });
    }
    for name in ["bare LF line endings", "bare LF ending the request line"] {
        permit_on_pass(
            &mut table,
            name,
            "RFC 9112 §2.2 (a bare LF may be taken as a line terminator)",
            Rest::Pipelined,
        );
    }
    assert_all_refused("header syntax", table).await;
}

// The raw origin itself.

/// Reads exactly `n` bytes from `stream`, within [`BOUND`].
async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    timeout(BOUND, stream.read_exact(&mut bytes))
        .await
        .expect("bytes arrive in time")
        .expect("read");
    bytes
}

/// Reads until the peer closes, within [`BOUND`].
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    timeout(BOUND, stream.read_to_end(&mut bytes))
        .await
        .expect("the origin closes the connection")
        .expect("read");
    bytes
}

#[tokio::test]
async fn raw_origin_records_pipelined_requests_and_answers_each() {
    let origin = RawOrigin::start(BodyMode::ReadBodyThenAnswer, REPLY).await;
    let sent = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n";
    let mut stream = TcpStream::connect(origin.addr()).await.unwrap();
    stream.write_all(sent).await.unwrap();

    assert_eq!(
        read_exactly(&mut stream, 3 * REPLY.len()).await,
        REPLY.repeat(3)
    );
    timeout(BOUND, origin.wait_for_requests(3)).await.unwrap();
    let requests = origin.requests();
    let summary: Vec<(usize, &str, &[u8], bool)> = requests
        .iter()
        .map(|r| (r.connection, r.head.as_str(), r.body.as_slice(), r.complete))
        .collect();
    assert_eq!(
        summary,
        [
            (
                0,
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5",
                b"hello".as_slice(),
                true
            ),
            (0, "GET /b HTTP/1.1\r\nHost: x", b"".as_slice(), true),
            (
                0,
                "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
                b"abcde".as_slice(),
                true
            ),
        ]
    );
    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.raw(0), sent);

    // A second connection is numbered 1.
    let mut other = TcpStream::connect(origin.addr()).await.unwrap();
    other
        .write_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_exactly(&mut other, REPLY.len()).await, REPLY);
    timeout(BOUND, origin.wait_for_requests(4)).await.unwrap();
    assert_eq!(origin.requests()[3].connection, 1);
    assert_eq!(origin.connections(), 2);
}

#[tokio::test]
async fn raw_origin_answering_early_swallows_the_next_request_into_a_dangling_body() {
    let origin = RawOrigin::start(BodyMode::AnswerThenReadBody, REPLY).await;
    let mut stream = TcpStream::connect(origin.addr()).await.unwrap();
    // A Content-Length with no body behind it: answered at once.
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_exactly(&mut stream, REPLY.len()).await, REPLY);

    // The next request on the connection becomes that body, and its remains garbage.
    stream
        .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    timeout(BOUND, origin.wait_for_requests(2)).await.unwrap();
    assert!(
        read_to_close(&mut stream).await.is_empty(),
        "no answer to garbage"
    );
    let requests = origin.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(
        requests[0].head,
        "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5"
    );
    assert_eq!(requests[0].body, b"GET /");
    assert!(requests[0].complete);
    assert!(requests[1].head.starts_with("b HTTP/1.1"), "{requests:#?}");
    assert!(!requests[1].complete);
    assert!(origin_problems(&requests).len() > 1, "the checks notice it");
}

#[tokio::test]
async fn raw_origin_records_garbage_and_cut_short_bodies_then_closes() {
    let origin = RawOrigin::start(BodyMode::ReadBodyThenAnswer, REPLY).await;

    let mut garbage = TcpStream::connect(origin.addr()).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01 not http\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut garbage).await.is_empty());

    // A body cut short by the client closing: recorded with what arrived.
    let mut cut = TcpStream::connect(origin.addr()).await.unwrap();
    cut.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    cut.shutdown().await.unwrap();
    assert!(read_to_close(&mut cut).await.is_empty(), "never answered");

    timeout(BOUND, origin.wait_for_requests(2)).await.unwrap();
    let requests = origin.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].connection, 0);
    assert!(requests[0].head.contains("not http") && !requests[0].complete);
    assert_eq!(requests[1].connection, 1);
    assert_eq!(requests[1].body, b"half");
    assert!(!requests[1].complete);
    assert_eq!(origin.raw(0), b"\x16\x03\x01 not http\r\n\r\n");
}
