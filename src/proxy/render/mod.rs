//! The one place a response and its `Cache-Status` (RFC 9211) are built: a
//! typed [`CacheStatus`] renders the header, labels the metric and the access
//! log, so the three always agree; stored entries are rendered for one client
//! here ([`from_entry`]), and every answer leaves as an [`Answer`].

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use tokio::time::Instant;

use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::body::{BoxError, ProxyBody};
use super::fill::StreamingAnswer;
use crate::cache::CachedResponse;
use crate::cache::policy::{self, PassReason};
use crate::http::range::{self, ByteRange, Ranges};
use crate::http::wire::{WireResponse, encode_head};
use crate::http::{CACHE_STATUS, contains_any};
use crate::logging::{AccessEntry, LogSink};
use crate::metrics::CacheStatusLabel;

/// How one request was answered: the value its `Cache-Status` header, its
/// `cache_status` metric label and its access-log field all come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    /// How corral handled the request.
    pub outcome: CacheOutcome,
    /// What the origin answered, when corral asked it.
    pub fwd_status: Option<StatusCode>,
    /// Whether this request's fetch stored its answer.
    pub stored: bool,
    /// Remaining freshness of a hit, in seconds.
    pub ttl: Option<u64>,
    /// The one `detail` parameter: why an answer was not stored or shared,
    /// or corral's own failure.
    pub detail: Option<&'static str>,
    /// Whether corral answered with an error of its own (`detail` says
    /// which); the request then counts as `error` whatever its outcome.
    pub failed: bool,
}

impl CacheStatus {
    /// The status of a request answered by `outcome`, with nothing else to say.
    pub fn of(outcome: CacheOutcome) -> CacheStatus {
        CacheStatus {
            outcome,
            fwd_status: None,
            stored: false,
            ttl: None,
            detail: None,
            failed: false,
        }
    }

    /// Corral's own error answer, reached by way of `outcome`, for `detail`.
    pub fn failure(outcome: CacheOutcome, detail: &'static str) -> CacheStatus {
        CacheStatus {
            detail: Some(detail),
            failed: true,
            ..CacheStatus::of(outcome)
        }
    }

    /// The bounded metric label: `error` for corral's own failures, else the outcome's.
    pub fn label(&self) -> CacheStatusLabel {
        if self.failed {
            CacheStatusLabel::Error
        } else {
            self.outcome.status_label()
        }
    }

    /// The `Cache-Status` field value (one member, with one `detail` at most).
    pub fn header(&self) -> HeaderValue {
        cache_status_value(
            self.outcome,
            self.fwd_status,
            self.stored,
            self.ttl,
            self.detail,
        )
    }
}

/// A response on its way to the client, with the status that describes it;
/// the `Cache-Status` header is set from that status when it is built.
pub struct Answer {
    /// The response.
    pub response: Response<ProxyBody>,
    /// How it was produced.
    pub status: CacheStatus,
}

impl Answer {
    /// `response`, labelled by `status`, whose `Cache-Status` member it
    /// carries last: after any members the origin (or a cache before it)
    /// sent, as RFC 9211 §2 orders them, and exactly once.
    pub fn new(response: Response<ProxyBody>, status: CacheStatus) -> Answer {
        let ours = status.header();
        Answer::with_member(response, status, ours)
    }

    /// [`Answer::new`] with `ours`, `status`'s member already rendered.
    fn with_member(
        mut response: Response<ProxyBody>,
        status: CacheStatus,
        ours: HeaderValue,
    ) -> Answer {
        let headers = response.headers_mut();
        let value = if headers.contains_key(&CACHE_STATUS) {
            after_upstream(headers, &ours)
        } else {
            ours
        };
        headers.insert(CACHE_STATUS.clone(), value);
        Answer { response, status }
    }
}

/// The upstream `Cache-Status` lines of `headers` joined into one list, with
/// `ours` appended as its last member.
fn after_upstream(headers: &http::HeaderMap, ours: &HeaderValue) -> HeaderValue {
    let mut joined = Vec::with_capacity(128);
    for line in headers.get_all(&CACHE_STATUS) {
        joined.extend_from_slice(line.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ours.as_bytes());
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ours.clone())
}

/// A stored response this request may reuse as it is, rendered for it: a
/// hit while fresh; past its freshness (the client's `max-stale` accepted
/// it), a stale answer that says so. A fresh hit's `Age` and `Cache-Status`
/// values are rendered once per process for each number of seconds and
/// shared, so a hit allocates nothing for them.
///
/// A plain GET or HEAD (no range, no validators), most hits, gets a copy of
/// the head this worker thread last rendered for the entry in the same
/// second, when there is one (see [`HitHead`]).
///
/// `age` is the entry's [`CachedResponse::current_age`] when the request
/// arrived, read once by the caller that judged the entry reusable: whether
/// it is fresh, its `Age` and its `ttl` all follow from it.
pub fn hit(entry: &Arc<CachedResponse>, parts: &Parts, age: Duration) -> Answer {
    let left = entry.freshness_left(age);
    if left.is_zero() {
        let status = CacheStatus::of(CacheOutcome::Stale(StaleReason::ClientMaxStale));
        return from_entry_at_age(entry, status, parts, age);
    }
    let ttl = left.as_secs();
    let age = age.as_secs();
    let status = CacheStatus {
        ttl: Some(ttl),
        ..CacheStatus::of(CacheOutcome::Hit)
    };
    let head = parts.method == Method::HEAD;
    if plain_whole(parts) {
        let body = if head {
            ProxyBody::empty()
        } else {
            ProxyBody::full(entry.body())
        };
        let mut response = Response::new(body);
        *response.status_mut() = entry.status;
        *response.headers_mut() = HitHead::of(entry, age, ttl, status);
        return Answer { response, status };
    }
    let ours = rendered_once(&HIT_STATUS_VALUES, ttl, |_| status.header());
    let age = rendered_once(&AGE_VALUES, age, HeaderValue::from);
    render_entry(entry, status, ours, parts, age)
}

/// [`hit`] in HTTP/1.1 wire form, for the listener's quick path: the
/// same bytes hyper would write for [`hit`]'s answer, the head encoded once
/// per worker thread for each second of the entry's age. `None` for
/// anything but a fresh whole answer to a plain GET or HEAD (no range, no
/// validators), and for entries whose head cannot be sent as stored (see
/// [`HitHead::wire`]): those are for [`hit`].
pub fn wire_hit(
    entry: &Arc<CachedResponse>,
    parts: &Parts,
    age: Duration,
) -> Option<(WireResponse, CacheStatus)> {
    let left = entry.freshness_left(age);
    if left.is_zero() || !plain_whole(parts) {
        return None;
    }
    let head_only = parts.method == Method::HEAD;
    let ttl = left.as_secs();
    let status = CacheStatus {
        ttl: Some(ttl),
        ..CacheStatus::of(CacheOutcome::Hit)
    };
    let head = HitHead::wire(entry, age.as_secs(), ttl, status)?;
    let body = if head_only {
        Bytes::new()
    } else {
        entry.body()
    };
    Some((WireResponse { head, body }, status))
}

/// A fresh entry's whole answer head for a plain GET or HEAD, as rendered
/// in one second of its age: what [`whole_head`] builds line by line (about
/// 1,700 instructions for seven lines), a clone copies (about a third).
///
/// Each worker thread keeps the heads of the entries it served last, in
/// [`HIT_HEAD_SLOTS`] slots picked by the entry's address: a handful of
/// KiB per thread, whatever the cache holds. A slot holds its entry's `Arc`,
/// so the address cannot name another entry while the slot lives, and it is
/// only read for the entry a lookup has just returned: a purged or replaced
/// entry is never served from here.
struct HitHead {
    entry: Arc<CachedResponse>,
    age: u64,
    ttl: u64,
    headers: HeaderMap,
    /// `headers` in wire form, once a quick hit asked for it: `None` inside
    /// when they cannot be sent that way.
    wire: Option<Option<Bytes>>,
}

/// Heads kept per worker thread.
const HIT_HEAD_SLOTS: usize = 64;

thread_local! {
    static HIT_HEADS: RefCell<Vec<Option<HitHead>>> = const { RefCell::new(Vec::new()) };
}

impl HitHead {
    /// `entry`'s head for a plain hit at `age` seconds with `ttl` left,
    /// from this thread's slot when it holds that, else rendered (and kept).
    fn of(entry: &Arc<CachedResponse>, age: u64, ttl: u64, status: CacheStatus) -> HeaderMap {
        HitHead::kept(entry, age, ttl, status, |kept| kept.headers.clone())
    }

    /// [`HitHead::of`] in HTTP/1.1 wire form, encoded once per slot. `None`
    /// when hyper would write other lines than the stored ones (a
    /// `Content-Length` or `Date` the entry lacks, an empty body's length, a
    /// 1xx, 204 or 304) or spell the status line its own way.
    fn wire(entry: &Arc<CachedResponse>, age: u64, ttl: u64, status: CacheStatus) -> Option<Bytes> {
        HitHead::kept(entry, age, ttl, status, |kept| {
            kept.wire
                .get_or_insert_with(|| {
                    let headers = &kept.headers;
                    // hyper rewrites the length line of an empty body, and
                    // drops it for 1xx, 204 and 304 (RFC 9110 §8.6).
                    let status = kept.entry.status;
                    let plain_status = !(status.is_informational()
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED);
                    let complete = plain_status
                        && kept.entry.body_len() > 0
                        && headers.contains_key(header::CONTENT_LENGTH)
                        && headers.contains_key(header::DATE);
                    complete
                        .then(|| encode_head(kept.entry.status, headers))
                        .flatten()
                })
                .clone()
        })
    }

    /// Runs `read` on this thread's slot for `entry` at `age` with `ttl`
    /// left, rendering the slot anew when it holds anything else.
    fn kept<R>(
        entry: &Arc<CachedResponse>,
        age: u64,
        ttl: u64,
        status: CacheStatus,
        read: impl FnOnce(&mut HitHead) -> R,
    ) -> R {
        HIT_HEADS.with_borrow_mut(|heads| {
            if heads.is_empty() {
                heads.resize_with(HIT_HEAD_SLOTS, || None);
            }
            // Entries are heap addresses: the bits above the allocator's
            // alignment, mixed, pick the slot.
            let address = Arc::as_ptr(entry) as usize as u64;
            let slot = (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
            let fresh = || HitHead {
                entry: Arc::clone(entry),
                age,
                ttl,
                headers: HitHead::render(entry, age, ttl, status),
                wire: None,
            };
            let Some(slot) = heads.get_mut(slot) else {
                return read(&mut fresh());
            };
            match slot {
                Some(kept)
                    if Arc::ptr_eq(&kept.entry, entry) && kept.age == age && kept.ttl == ttl =>
                {
                    read(kept)
                }
                _ => read(slot.insert(fresh())),
            }
        })
    }

    /// The head, its values copied for this thread alone. A stored entry's
    /// values share one reference count with its body, and the `Age` and
    /// `Cache-Status` tables are shared by every thread: cloning them on
    /// each hit of a hot key would have every core write the same few cache
    /// lines. Copied here, a clone counts references only this thread uses.
    fn render(entry: &CachedResponse, age: u64, ttl: u64, status: CacheStatus) -> HeaderMap {
        let ours = rendered_once(&HIT_STATUS_VALUES, ttl, |_| status.header());
        let age = rendered_once(&AGE_VALUES, age, HeaderValue::from);
        let mut head = whole_head(entry, age, entry.status == StatusCode::OK, ours);
        for value in head.values_mut() {
            if let Ok(mut own) = HeaderValue::from_bytes(value.as_bytes()) {
                own.set_sensitive(value.is_sensitive());
                *value = own;
            }
        }
        head
    }
}

/// Seconds up to which the `Age` and a hit's `Cache-Status` values are
/// rendered once per process and shared: a day.
const RENDERED_SECONDS: usize = 86_400;

/// `Age: N`, rendered once per `N` below [`RENDERED_SECONDS`]. Only the
/// slots a process uses are ever touched, so the table costs its address
/// space, not its size, in memory.
static AGE_VALUES: [OnceLock<HeaderValue>; RENDERED_SECONDS] =
    [const { OnceLock::new() }; RENDERED_SECONDS];

/// A fresh hit's `Cache-Status: corral; hit; ttl=N`, rendered once per `N`
/// below [`RENDERED_SECONDS`].
static HIT_STATUS_VALUES: [OnceLock<HeaderValue>; RENDERED_SECONDS] =
    [const { OnceLock::new() }; RENDERED_SECONDS];

/// The value `render` makes for `seconds`: from `table` when it has a slot
/// for it (a clone shares the bytes, allocating nothing), else made afresh.
fn rendered_once(
    table: &'static [OnceLock<HeaderValue>],
    seconds: u64,
    render: impl FnOnce(u64) -> HeaderValue,
) -> HeaderValue {
    match usize::try_from(seconds)
        .ok()
        .and_then(|slot| table.get(slot))
    {
        Some(slot) => slot.get_or_init(|| render(seconds)).clone(),
        None => render(seconds),
    }
}

/// Renders a stored (or just fetched) response for one client: `Age` and
/// `Cache-Status` added, the body left out for HEAD, and a 304 instead when
/// the client's `If-None-Match` / `If-Modified-Since` matches (RFC 9111
/// §4.3.2).
///
/// A stored 200 asked for by GET or HEAD honours `Range` (RFC 9110 §14), after
/// those preconditions (§13.2.2) and when any `If-Range` matches: one range is
/// a 206 with its slice of the stored body (no copy), none satisfiable a 416
/// naming the length. Several ranges would need a `multipart/byteranges`
/// body, which corral does not build: they get the whole 200, as §14.2
/// allows. Every such answer says `Accept-Ranges: bytes`. `status` is the
/// `Cache-Status` whatever the answer's code.
pub fn from_entry(
    entry: &CachedResponse,
    status: CacheStatus,
    parts: &Parts,
    now: Instant,
) -> Answer {
    from_entry_at_age(entry, status, parts, entry.current_age(now))
}

/// [`from_entry`] with the entry's current age already read.
fn from_entry_at_age(
    entry: &CachedResponse,
    status: CacheStatus,
    parts: &Parts,
    age: Duration,
) -> Answer {
    let age = HeaderValue::from(age.as_secs());
    render_entry(entry, status, status.header(), parts, age)
}

/// [`from_entry`], with the `Age` value and `status`'s `Cache-Status` member
/// (`ours`) already rendered.
fn render_entry(
    entry: &CachedResponse,
    status: CacheStatus,
    ours: HeaderValue,
    parts: &Parts,
    age: HeaderValue,
) -> Answer {
    let request = &parts.headers;
    // Conditional and range requests read the stored validators through a
    // map; a plain hit, most of them, asks once and never builds one.
    let stored = contains_any(request, &WHOLE_AFFECTING).then(|| entry.headers.to_map());
    let conditional = stored.is_some()
        && (request.contains_key(header::IF_NONE_MATCH)
            || request.contains_key(header::IF_MODIFIED_SINCE));
    if let Some(stored) = stored.as_ref().filter(|_| conditional)
        && policy::client_not_modified(request, entry.status, stored, entry.received_at())
    {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let mut headers = policy::not_modified_response_headers(stored);
        headers.insert(header::AGE, age);
        *response.headers_mut() = headers;
        return Answer::with_member(response, status, ours);
    }
    let head = parts.method == Method::HEAD;
    let ranged = entry.status == StatusCode::OK && (head || parts.method == Method::GET);
    let complete = u64::try_from(entry.body_len()).unwrap_or(u64::MAX);
    // Range handling is defined for GET alone; a HEAD ignores `Range` (RFC
    // 9110 §14.2), so it learns the whole representation's length.
    let ranges = match &stored {
        Some(stored) if ranged && !head && request.contains_key(header::RANGE) => {
            range::requested_ranges(request, stored, complete)
        }
        _ => Ranges::Ignore,
    };
    match ranges {
        Ranges::One(range) => {
            if let Some(answer) = partial(entry, range, complete, age.clone(), head, status) {
                return answer;
            }
        }
        Ranges::Unsatisfiable => return unsatisfiable(complete, status),
        // No multipart/byteranges: several ranges get the whole 200.
        Ranges::Several(_) | Ranges::Ignore => {}
    }
    let body = if head {
        ProxyBody::empty()
    } else {
        ProxyBody::full(entry.body())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = whole_head(entry, age, ranged, ours);
    Answer { response, status }
}

/// The head of an answer with `entry`'s whole body: its stored lines, `Age`,
/// `Accept-Ranges` when it is `ranged`, and `Cache-Status` with `ours` as
/// its last member.
fn whole_head(
    entry: &CachedResponse,
    age: HeaderValue,
    ranged: bool,
    ours: HeaderValue,
) -> HeaderMap {
    let mut headers = entry.headers.to_map_with_room(ANSWER_HEADERS);
    headers.insert(header::AGE, age);
    if ranged {
        headers.insert(header::ACCEPT_RANGES, accept_bytes());
    }
    // The stored lines tell whether there are upstream members more cheaply
    // than the map.
    let value = if entry.headers.contains_key(&CACHE_STATUS) {
        after_upstream(&headers, &ours)
    } else {
        ours
    };
    headers.insert(CACHE_STATUS.clone(), value);
    headers
}

/// Headers a rendered entry adds to its stored ones: `Age`,
/// `Accept-Ranges`, `Cache-Status`.
const ANSWER_HEADERS: usize = 3;

/// A response still arriving from the origin, rendered for a plain GET (no
/// range, no validators: see [`wants_whole`]): its head with `Cache-Status`,
/// and its body read from the shared stream as it arrives. `None` when the
/// body can no longer be read from its first byte (an answer too large to
/// store, whose start the other readers have moved past).
pub fn from_stream(streaming: &StreamingAnswer, status: CacheStatus) -> Option<Answer> {
    let reader = streaming.body.reader()?;
    let chunks = futures_util::stream::unfold(reader, |mut reader| async move {
        let next = reader.next().await?;
        Some((next.map(Frame::data).map_err(BoxError::from), reader))
    });
    let mut response = Response::new(ProxyBody::Stream(BodyExt::boxed_unsync(StreamBody::new(
        chunks,
    ))));
    *response.status_mut() = streaming.status;
    let mut headers = streaming.headers.clone();
    if streaming.status == StatusCode::OK && streaming.storing {
        // Once stored, its ranges are answered from the cache.
        headers.insert(header::ACCEPT_RANGES, accept_bytes());
    }
    *response.headers_mut() = headers;
    Some(Answer::new(response, status))
}

/// Whether `parts` asks for more than a plain GET's whole body as it
/// arrives: a HEAD, a range, or validators to match. Such a request is
/// answered from the complete response ([`from_entry`]), not from a body
/// still arriving.
pub fn wants_whole(parts: &Parts) -> bool {
    parts.method != Method::GET || contains_any(&parts.headers, &WHOLE_AFFECTING)
}

/// Whether `parts` is a GET or HEAD for the whole stored response as it
/// is: no range, no validators to match.
pub fn plain_whole(parts: &Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && !contains_any(&parts.headers, &WHOLE_AFFECTING)
}

/// The request fields that make an answer other than the whole stored
/// response: a range, or validators to match.
const WHOLE_AFFECTING: [HeaderName; 3] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// `Accept-Ranges: bytes`: corral answers byte ranges of stored 200s.
fn accept_bytes() -> HeaderValue {
    HeaderValue::from_static("bytes")
}

/// The 206 (RFC 9110 §15.3.7) carrying `range` of `entry`'s body of
/// `complete` bytes: the stored headers (so `Date`, `Cache-Control`, `ETag`,
/// `Expires`, `Content-Location` and `Vary` as a 200 would have them) with
/// the slice's `Content-Length` and its `Content-Range`; no body for HEAD.
/// `None` if the range does not fit in memory's offsets, which a range
/// resolved against the body's own length always does.
fn partial(
    entry: &CachedResponse,
    range: ByteRange,
    complete: u64,
    age: HeaderValue,
    head: bool,
    status: CacheStatus,
) -> Option<Answer> {
    let first = usize::try_from(range.first).ok()?;
    let last = usize::try_from(range.last).ok()?;
    if last >= entry.body_len() || first > last {
        return None;
    }
    let content_range = HeaderValue::try_from(range.content_range(complete)).ok()?;
    let body = if head {
        ProxyBody::empty()
    } else {
        ProxyBody::full(entry.body().slice(first..=last))
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    // Content-Range and Content-Length are the two beyond a 200's.
    let mut headers = entry.headers.to_map_with_room(ANSWER_HEADERS + 1);
    headers.insert(header::AGE, age);
    headers.insert(header::ACCEPT_RANGES, accept_bytes());
    headers.insert(header::CONTENT_RANGE, content_range);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.length()));
    *response.headers_mut() = headers;
    Some(Answer::new(response, status))
}

/// The 416 (RFC 9110 §15.5.17) for a representation of `complete` bytes:
/// `Content-Range: bytes */complete`, an empty body, and none of the stored
/// headers, which describe content this answer does not carry (and a
/// downstream cache must not store it as if it did).
fn unsatisfiable(complete: u64, status: CacheStatus) -> Answer {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let headers = response.headers_mut();
    if let Ok(content_range) = HeaderValue::try_from(range::unsatisfied_content_range(complete)) {
        headers.insert(header::CONTENT_RANGE, content_range);
    }
    headers.insert(header::ACCEPT_RANGES, accept_bytes());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    crate::http::ensure_date(headers, std::time::SystemTime::now());
    Answer::new(response, status)
}

/// Appends the access line for `answer` to `sink`: method, path (never the
/// query, which may carry secrets), status, `cache_status` label, time to the
/// response head, and body length when known before it is sent.
pub fn log_access(
    sink: &LogSink,
    parts: &Parts,
    answer: &Answer,
    elapsed: std::time::Duration,
    at: std::time::Instant,
) {
    let response = &answer.response;
    let bytes = http_body::Body::size_hint(response.body())
        .exact()
        .or_else(|| {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
    log_line(
        sink,
        parts,
        response.status(),
        answer.status,
        bytes,
        elapsed,
        at,
    );
}

/// [`log_access`] for a [`wire_hit`]: the same line as its [`hit`] would log.
pub fn log_wire_access(
    sink: &LogSink,
    parts: &Parts,
    entry: &CachedResponse,
    status: CacheStatus,
    elapsed: std::time::Duration,
    at: std::time::Instant,
) {
    let bytes = u64::try_from(entry.body_len()).ok();
    let bytes = if parts.method == Method::HEAD {
        Some(0)
    } else {
        bytes
    };
    log_line(sink, parts, entry.status, status, bytes, elapsed, at);
}

/// The one access line both forms of answer log.
fn log_line(
    sink: &LogSink,
    parts: &Parts,
    code: StatusCode,
    status: CacheStatus,
    bytes: Option<u64>,
    elapsed: std::time::Duration,
    at: std::time::Instant,
) {
    sink.access(&AccessEntry {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        status: code.as_u16(),
        cache_status: status.label().as_str(),
        duration_micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        bytes,
        at,
    });
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
    /// The bounded metric label this outcome counts under.
    pub fn status_label(self) -> CacheStatusLabel {
        match self {
            CacheOutcome::Hit => CacheStatusLabel::Hit,
            CacheOutcome::Miss | CacheOutcome::Revalidated { collapsed: false } => {
                CacheStatusLabel::Miss
            }
            CacheOutcome::Coalesced | CacheOutcome::Revalidated { collapsed: true } => {
                CacheStatusLabel::Coalesced
            }
            CacheOutcome::Stale(_) => CacheStatusLabel::Stale,
            CacheOutcome::Pass(_) => CacheStatusLabel::Pass,
            CacheOutcome::Error => CacheStatusLabel::Error,
        }
    }

    /// The metric label's text: hit, miss, coalesced, stale, pass or error.
    pub fn label(self) -> &'static str {
        self.status_label().as_str()
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
    /// The origin could not be reached (connect error, reset, timeout), and
    /// the entry is within the route's `stale_if_disconnected` (RFC 9111 §4.2.4).
    Disconnected,
    /// The origin is slow: the client waited the route's `stale_deadline`
    /// and got the stored copy while the fetch goes on for the cache.
    SlowOrigin,
    /// Past its freshness, and the client's `max-stale` accepts it.
    ClientMaxStale,
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
            StaleReason::Disconnected => "stale-disconnected",
            StaleReason::SlowOrigin => "stale-slow-origin",
            StaleReason::ClientMaxStale => "stale-max-stale",
        }
    }
}

/// Builds the RFC 9211 `Cache-Status` value for one response.
///
/// `hit` carries the remaining freshness as `ttl`; a leader's miss says `stored`
/// when it was stored; a follower says `collapsed`; a revalidation says
/// `fwd=stale` with the origin's status (304 when it confirmed the stored
/// response); a pass says `fwd=bypass` with the reason in `detail`; a stale
/// answer is a `hit` whose `detail` says why it was served stale. `detail`,
/// when given, is the only `detail` rendered (a failed pass names its failure).
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
        // A failed pass names its failure as the one detail.
        CacheOutcome::Pass(reason) => {
            value.push_str("; fwd=bypass");
            if detail.is_none() {
                value.push_str("; detail=");
                value.push_str(reason.as_str());
            }
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
mod tests;
