//! The stored response: one complete, shareable answer with everything about
//! its freshness computed once when it was stored, the request header values
//! its variant was chosen by, and its versioned wire form ([`super::wire`]) for
//! tiers beyond this process.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::policy::{self, Lifetime, LifetimeSource, Reuse};
use super::wire::{WireEntry, WireSelecting};
use crate::config::FreshnessPolicy;
use crate::http::directives::{
    CORRAL_CACHE_CONTROL, FieldScope, RequestDirectives, ResponseDirectives,
};

/// Extra time an entry stays in memory after it can last be served (its
/// freshness plus its longest stale window), so in-flight readers, a breaker
/// that keeps the origin out, and clients' `max-stale` can still find it.
pub const EVICTION_GRACE: Duration = Duration::from_secs(30);

/// The bytes malloc takes for an allocation of `size` bytes: glibc on 64-bit
/// Linux adds an 8-byte header and rounds up to 16, 32 at least. What the
/// cache charges is what the allocator really spends, so that the
/// configured budget is the memory the operator gets.
pub(crate) fn malloc_chunk(size: usize) -> usize {
    if size == 0 {
        0
    } else {
        ((size + 8 + 15) & !15).max(32)
    }
}

/// The header `bytes` keeps alive besides its own buffer once it is shared
/// (its reference count): what the first clone of an exact-size `Bytes` allocates.
const SHARED_BYTES_HEADER: usize = 32;

/// When a response arrived, on the two clocks its age is computed from
/// (RFC 9111 §4.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the request that fetched it was sent (local clock).
    pub request_time: Instant,
    /// When its head arrived (local clock).
    pub response_time: Instant,
    /// When its head arrived (wall clock), in whole seconds: the resolution
    /// of the `Date` it is compared with, so a response dated this very
    /// second has no apparent age.
    pub received_at: SystemTime,
}

impl Timing {
    /// The timing of a response whose request left at `request_time` and
    /// whose head arrived at `response_time` / `received_at`.
    pub fn new(request_time: Instant, response_time: Instant, received_at: SystemTime) -> Timing {
        let whole_seconds = received_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(received_at, |since| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
            });
        Timing {
            request_time,
            response_time,
            received_at: whole_seconds,
        }
    }
}

/// A complete, shareable response and everything about its freshness,
/// computed once when it was stored. Immutable: readers clone the `Arc`; a
/// revalidation stores a new one.
///
/// Laid out for size: a cached object is typically small, so what an entry
/// spends besides its body decides how many fit in the budget
/// (`tests/entry_memory.rs` holds it to 1.5 times what it stores). The body
/// and every header value share one exact-size allocation, the directives are
/// kept only as far as reuse reads them, and the instant it stops being fresh
/// is derived rather than stored.
#[derive(Debug)]
pub struct CachedResponse {
    /// End-to-end headers as they will be sent: hop-by-hop removed, `Via`
    /// added, `Corral-Cache-Control` (corral's own) kept apart, so clients
    /// never see it but [`CachedResponse::origin_headers`] can merge a 304
    /// with it. Their block holds the body too ([`CachedResponse::body`]).
    pub headers: StoredHeaders,
    /// The request header values this variant was selected by (from `Vary`).
    pub variant: Variant,
    /// Until when it may be needed: freshness, plus the longest stale window
    /// that may apply, plus [`EVICTION_GRACE`]. The cache drops it afterwards.
    pub keep_until: Instant,
    /// How long it is fresh ([`Lifetime::duration`]), in nanoseconds: eight
    /// bytes where a `Duration` takes sixteen, and a lifetime is at most 2^31
    /// seconds.
    lifetime_nanos: u64,
    /// Its age when it arrived (`corrected_initial_age`), in nanoseconds,
    /// saturating some 584 years on: an age counts as 2^31 seconds at most
    /// ([`policy::current_age`]), so that changes nothing.
    initial_age_nanos: u64,
    /// When its head arrived (local clock): its age grows from here.
    response_time: Instant,
    /// When its head arrived (wall clock), in whole seconds ([`Timing`]).
    received_at: SystemTime,
    /// What reuse reads of the directives of the field that governs it.
    rules: ReuseRules,
    /// Status the origin answered with.
    pub status: StatusCode,
    /// Whether it carries a validator, so it can be revalidated with a
    /// conditional request.
    pub has_validator: bool,
    /// The rule its lifetime came from ([`Lifetime::source`]).
    lifetime_source: LifetimeSource,
}

/// The part of a response's directives that reuse and its stale windows read
/// ([`policy::reuse`], [`stale_windows`]): 12 bytes instead of
/// [`ResponseDirectives`]' 120. The others decided whether it could be stored
/// and how long it is fresh, and the entry keeps those results instead.
#[derive(Debug, Clone, Copy)]
struct ReuseRules {
    stale_while_revalidate: Window,
    stale_if_error: Window,
    /// `no-cache`, in either form: policy treats both alike.
    no_cache: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
    immutable: bool,
}

impl ReuseRules {
    fn new(directives: &ResponseDirectives) -> ReuseRules {
        ReuseRules {
            stale_while_revalidate: Window::new(directives.stale_while_revalidate),
            stale_if_error: Window::new(directives.stale_if_error),
            no_cache: directives.no_cache.is_some(),
            must_revalidate: directives.must_revalidate,
            proxy_revalidate: directives.proxy_revalidate,
            immutable: directives.immutable,
        }
    }

    /// Directives that read, for every field reuse and the stale windows
    /// consult, as the ones the rules were taken from; the other fields are
    /// left at their defaults. Allocates nothing.
    fn directives(self) -> ResponseDirectives {
        ResponseDirectives {
            stale_while_revalidate: self.stale_while_revalidate.get(),
            stale_if_error: self.stale_if_error.get(),
            no_cache: self.no_cache.then_some(FieldScope::Whole),
            must_revalidate: self.must_revalidate,
            proxy_revalidate: self.proxy_revalidate,
            immutable: self.immutable,
            ..ResponseDirectives::default()
        }
    }
}

/// A stale window in whole seconds, or none. Windows are delta-seconds
/// ([`ResponseDirectives`]), at most
/// [`crate::http::directives::DELTA_SECONDS_MAX`] (2^31), so four bytes hold
/// them, with the largest value meaning "none".
#[derive(Debug, Clone, Copy)]
struct Window(u32);

impl Window {
    const NONE: u32 = u32::MAX;

    fn new(window: Option<Duration>) -> Window {
        Window(window.map_or(Window::NONE, |window| {
            u32::try_from(window.as_secs())
                .map_or(Window::NONE - 1, |secs| secs.min(Window::NONE - 1))
        }))
    }

    fn get(self) -> Option<Duration> {
        (self.0 != Window::NONE).then(|| Duration::from_secs(u64::from(self.0)))
    }
}

/// A stored response's header lines, in the order they arrived: each line's
/// name, and its value as a range of one shared, exact-size block.
///
/// A `HeaderMap` spends about 110 bytes on each of at least six slots and an
/// index besides; a `(HeaderName, HeaderValue)` pair is 72 bytes, 32 of them
/// the value's own `Bytes` handle. A line here is 40 bytes, and every value
/// (and, in a [`CachedResponse`], the body ahead of them) lives in one
/// allocation with one reference count. Lookups are linear, which for the
/// dozen lines a response carries is as fast as hashing; a hit builds the
/// `HeaderMap` it sends anyway ([`StoredHeaders::to_map_with_room`]), sharing
/// the block rather than copying it.
///
/// Lines may be kept hidden: stored with the others but never returned by
/// the methods that read the headers as they are sent (an entry's
/// `Corral-Cache-Control`).
#[derive(Clone, Default)]
pub struct StoredHeaders {
    /// The shown lines, then the hidden ones.
    lines: Box<[Line]>,
    /// Any leading bytes (an entry's body), then every line's value, in order.
    block: Bytes,
    /// How many of `lines` are shown.
    shown: u32,
    /// The names these lines do not share ([`SHARED_NAMES`] full, or a name
    /// too long for it): none nearly always, so one pointer when there are
    /// none. (A `Vec` would take 24 bytes of every entry for what nearly
    /// none has.)
    #[allow(clippy::box_collection)]
    own_names: Option<Box<Vec<HeaderName>>>,
}

/// One stored header line: eight bytes, where a `HeaderName` alone takes 32.
#[derive(Debug, Clone, Copy)]
struct Line {
    /// Its name: below [`SHARED_NAMES_MAX`], that slot of the shared names;
    /// from it on, one of the lines' own names.
    name: u16,
    /// Whether its value was marked sensitive (kept out of HPACK tables).
    sensitive: bool,
    /// Where its value ends in the block, counted from the first value's
    /// start; it starts where the line before it ends.
    end: u32,
}

/// Header names stored entries share. An origin sends the same few names it
/// invented (`x-request-id`, `server-timing`, …) on every response, and each
/// stored copy of one would take an allocation of its own and, once shared
/// with a `HeaderMap`, a reference count: 64 bytes for a 12-byte name, on every
/// entry. Kept here, each name is stored once for all of them. Bounded in
/// number and length (at most about 200 KiB, outside the cache's byte budget);
/// names beyond it are stored per entry, and charged to it.
///
/// A stored line names its field by slot number. Slots are filled once and
/// never change, so reading one takes no lock; the map, which finds a name's
/// slot, is only locked to store an entry.
static SHARED_NAMES: LazyLock<Mutex<HashMap<HeaderName, u16>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The names of [`SHARED_NAMES`], by slot.
static SHARED_NAME_SLOTS: [OnceLock<HeaderName>; SHARED_NAMES_MAX] =
    [const { OnceLock::new() }; SHARED_NAMES_MAX];

/// Most names [`SHARED_NAMES`] keeps.
const SHARED_NAMES_MAX: usize = 1024;

/// Longest name [`SHARED_NAMES`] keeps.
const SHARED_NAME_MAX_LEN: usize = 64;

/// The slot of `name` among the shared names (given it if it had none), or
/// `None` when it cannot have one: the table is full, or the name too long
/// for it.
fn share_name(names: &mut HashMap<HeaderName, u16>, name: &HeaderName) -> Option<u16> {
    if let Some(&slot) = names.get(name) {
        return Some(slot);
    }
    if names.len() >= SHARED_NAMES_MAX || name.as_str().len() > SHARED_NAME_MAX_LEN {
        return None;
    }
    let slot = u16::try_from(names.len()).ok()?;
    // A copy of its own (a name's bytes are always its own today; this
    // keeps the table from depending on it).
    let shared = HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
    SHARED_NAME_SLOTS
        .get(usize::from(slot))?
        .set(shared.clone())
        .ok()?;
    names.insert(shared, slot);
    Some(slot)
}

/// Whether `HeaderValue::from_maybe_shared` accepts `bytes` (http's rule,
/// the same as httparse's: tab, space, visible ASCII and obs-text). Every
/// value a `HeaderValue` held passes; checking when storing means a stored
/// line always rebuilds into a value.
fn valid_value(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

impl StoredHeaders {
    /// The lines of `headers`, in order, their values copied into one
    /// exact-size block: never into the buffer they were read from, which
    /// each entry would otherwise keep alive (8 KiB or more), unseen by the
    /// byte budget.
    pub fn detached(headers: &HeaderMap) -> StoredHeaders {
        StoredHeaders::with_leading(Bytes::new(), headers, None)
    }

    /// The lines of `headers` (those named `hidden` kept hidden, after the
    /// others), their values in one exact-size block after `leading`.
    /// `leading`'s own allocation is reused, grown to make room, when nothing
    /// else holds it; otherwise it is copied, once.
    fn with_leading(
        leading: Bytes,
        headers: &HeaderMap,
        hidden: Option<&HeaderName>,
    ) -> StoredHeaders {
        let is_hidden = |name: &HeaderName| hidden.is_some_and(|hidden| hidden == name);
        // Values hyper parsed always pass; a line whose value would not
        // rebuild is not stored.
        let lines = || {
            headers
                .iter()
                .filter(|(name, _)| !is_hidden(name))
                .chain(headers.iter().filter(|(name, _)| is_hidden(name)))
                .filter(|(_, value)| valid_value(value.as_bytes()))
        };
        // Offsets are four bytes: a head of 4 GiB cannot arrive, and one
        // built by hand keeps the lines that fit.
        let (mut count, mut values_len) = (0, 0usize);
        for (_, value) in lines() {
            match values_len.checked_add(value.len()) {
                Some(total) if u32::try_from(total).is_ok() => values_len = total,
                _ => break,
            }
            count += 1;
        }
        let needed = leading.len() + values_len;
        let mut block = if leading.is_unique() {
            Vec::from(leading)
        } else {
            let mut copy = Vec::with_capacity(needed);
            copy.extend_from_slice(&leading);
            copy
        };
        block.reserve_exact(needed.saturating_sub(block.len()));
        let values_start = block.len();
        let mut names = SHARED_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        let mut shown = 0;
        let mut own_names: Vec<HeaderName> = Vec::new();
        let lines = lines()
            .take(count)
            .map(|(name, value)| {
                block.extend_from_slice(value.as_bytes());
                shown += u32::from(!is_hidden(name));
                let name = share_name(&mut names, name).unwrap_or_else(|| {
                    own_names.push(name.clone());
                    // At most a few hundred lines reach here (hyper's limit
                    // on a head), far below u16's room above the slots.
                    let own = SHARED_NAMES_MAX + own_names.len() - 1;
                    u16::try_from(own).unwrap_or(u16::MAX)
                });
                Line {
                    name,
                    end: u32::try_from(block.len() - values_start).unwrap_or(u32::MAX),
                    sensitive: value.is_sensitive(),
                }
            })
            .collect();
        drop(names);
        // A reused `leading` may have had room to spare, which nothing would use.
        block.shrink_to_fit();
        let block = Bytes::from(block);
        // The first slice of an exact-size `Bytes` allocates its reference
        // count; taking it now keeps the cost (the entry's weight) the same
        // before and after its first hit.
        drop(block.clone());
        StoredHeaders {
            lines,
            block,
            shown,
            own_names: (!own_names.is_empty()).then(|| Box::new(own_names)),
        }
    }

    /// The name of `line`. Always found: a line is only made with its name
    /// in place.
    fn name_of(&self, line: &Line) -> Option<&HeaderName> {
        let slot = usize::from(line.name);
        match slot.checked_sub(SHARED_NAMES_MAX) {
            None => SHARED_NAME_SLOTS.get(slot)?.get(),
            Some(own) => self.own_names.as_ref()?.get(own),
        }
    }

    /// Where the values start in the block: after the leading bytes.
    fn values_start(&self) -> usize {
        let values = self.lines.last().map_or(0, |line| line.end as usize);
        self.block.len().saturating_sub(values)
    }

    /// The bytes stored ahead of the values (an entry's body), shared.
    fn leading(&self) -> Bytes {
        self.block.slice(..self.values_start())
    }

    /// Every line with where its value lies in the block.
    fn ranges(&self) -> impl Iterator<Item = (&Line, Range<usize>)> {
        let base = self.values_start();
        let mut start = base;
        self.lines.iter().map(move |line| {
            let end = base + line.end as usize;
            let range = start..end;
            start = end;
            (line, range)
        })
    }

    /// The value of `line`, at `range`: a slice of the block, not a copy.
    fn value(&self, line: &Line, range: Range<usize>) -> Option<HeaderValue> {
        if range.start > range.end || range.end > self.block.len() {
            return None;
        }
        // Checked when stored, so this always succeeds: a scan of the
        // bytes, no copy.
        let mut value = HeaderValue::from_maybe_shared(self.block.slice(range)).ok()?;
        value.set_sensitive(line.sensitive);
        Some(value)
    }

    /// The shown lines, with their values' ranges.
    fn shown_lines(&self) -> impl Iterator<Item = (&Line, Range<usize>)> {
        self.ranges().take(self.shown as usize)
    }

    /// The hidden lines, in order.
    fn hidden(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        self.ranges()
            .skip(self.shown as usize)
            .filter_map(|(line, range)| Some((self.name_of(line)?, self.value(line, range)?)))
    }
    /// Number of hidden lines.
    fn hidden_len(&self) -> usize {
        self.lines.len().saturating_sub(self.shown as usize)
    }

    /// Heap bytes it takes: the line array, the block (leading bytes
    /// included) with its reference count, and the names it does not share
    /// (a standard name takes nothing, but one is kept apart only when the
    /// shared names are full, and is charged as another name would be).
    pub fn heap_size(&self) -> usize {
        let block = if self.block.is_empty() {
            0
        } else {
            malloc_chunk(self.block.len()) + SHARED_BYTES_HEADER
        };
        let names: usize = self.own_names.as_ref().map_or(0, |own| {
            malloc_chunk(std::mem::size_of::<Vec<HeaderName>>())
                + malloc_chunk(std::mem::size_of_val(own.as_slice()))
                + own
                    .iter()
                    .map(|name| malloc_chunk(name.as_str().len()) + SHARED_BYTES_HEADER)
                    .sum::<usize>()
        });
        malloc_chunk(std::mem::size_of_val(&*self.lines)) + block + names
    }

    /// Every line, in order; a field with several lines yields each. Values
    /// share the block.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        self.shown_lines()
            .filter_map(|(line, range)| Some((self.name_of(line)?, self.value(line, range)?)))
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.shown as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.shown == 0
    }

    /// The first line of field `name`.
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.get_all(name).next()
    }

    /// Every line of field `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = HeaderValue> + 'a {
        self.shown_lines()
            .filter(move |(line, _)| self.name_of(line) == Some(name))
            .filter_map(|(line, range)| self.value(line, range))
    }

    /// Whether field `name` is present.
    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.shown_lines()
            .any(|(line, _)| self.name_of(line) == Some(name))
    }

    /// The lines as a `HeaderMap` sized for `more` lines besides, so adding
    /// them neither grows nor rehashes it. Values share the block, not
    /// copied; names are cloned, never parsed.
    pub fn to_map_with_room(&self, more: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len() + more);
        for (name, value) in self.iter() {
            map.append(name.clone(), value);
        }
        map
    }

    /// The lines as a `HeaderMap` (values shared, not copied).
    pub fn to_map(&self) -> HeaderMap {
        self.to_map_with_room(0)
    }

    /// Bytes its lines hold: names and values.
    pub fn content_len(&self) -> usize {
        self.iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum()
    }
}

impl PartialEq for StoredHeaders {
    /// The same lines, hidden ones included, in the same order, with the same
    /// values and sensitivity; whatever else their blocks hold is not compared.
    fn eq(&self, other: &StoredHeaders) -> bool {
        fn lines(
            headers: &StoredHeaders,
        ) -> impl Iterator<Item = (Option<&HeaderName>, bool, Option<&[u8]>)> {
            headers.ranges().map(|(line, range)| {
                (
                    headers.name_of(line),
                    line.sensitive,
                    headers.block.get(range),
                )
            })
        }
        self.shown == other.shown && lines(self).eq(lines(other))
    }
}

impl Eq for StoredHeaders {}

impl std::fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter())
            .entries(self.hidden())
            .finish()
    }
}

/// Copies a header value into its own exact-size allocation. Values parsed
/// by hyper are slices of the connection's read buffer: stored as they are,
/// each entry would keep a whole buffer (8 KiB or more) alive, unseen by the
/// byte budget.
pub(super) fn detach_value(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// Directives that ignore the client's wishes: what a request without
/// `Cache-Control` or `Pragma` means.
pub const NO_REQUEST_DIRECTIVES: RequestDirectives = RequestDirectives {
    no_cache: false,
    no_store: false,
    max_age: None,
    max_stale: None,
    min_fresh: None,
    only_if_cached: false,
};

impl CachedResponse {
    /// Builds an entry from a complete origin response and the `directives`
    /// its governing field holds (parsed once, by the caller's verdict),
    /// computing its lifetime (under `policy`), initial age, validator and how
    /// long it must be kept. `headers` are the origin's end-to-end headers;
    /// `Corral-Cache-Control` is kept apart from the others. The body and the
    /// header values are copied into one exact-size allocation (the body's
    /// own, grown, when nothing else holds it): an entry never keeps a read
    /// buffer or a larger body alive.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        directives: ResponseDirectives,
        body: Bytes,
        variant: Variant,
        timing: Timing,
        policy: &FreshnessPolicy,
    ) -> CachedResponse {
        let lifetime =
            policy::freshness_lifetime(status, &headers, &directives, timing.received_at, policy);
        let initial_age = policy::corrected_initial_age(
            &headers,
            timing.request_time,
            timing.response_time,
            timing.received_at,
        );
        let stored = Stored {
            status,
            headers,
            directives,
            body,
            variant,
        };
        CachedResponse::assemble(stored, timing, lifetime, initial_age, policy)
    }

    /// The entry `stored` becomes, arrived at `timing`, `lifetime` fresh and
    /// `initial_age` old on arrival: when it may be reclaimed, its validator,
    /// and its `Corral-Cache-Control` kept apart.
    fn assemble(
        stored: Stored,
        timing: Timing,
        lifetime: Lifetime,
        initial_age: Duration,
        policy: &FreshnessPolicy,
    ) -> CachedResponse {
        let Stored {
            status,
            headers,
            directives,
            body,
            variant,
        } = stored;
        let fresh_until = policy::fresh_until(timing.response_time, lifetime.duration, initial_age);
        let (while_revalidate, if_error) = stale_windows(&directives, lifetime, policy);
        let keep_until = fresh_until
            .checked_add(
                while_revalidate
                    .max(if_error)
                    .saturating_add(EVICTION_GRACE),
            )
            .unwrap_or(fresh_until);
        let has_validator = policy::has_validator(&headers);
        let headers = StoredHeaders::with_leading(body, &headers, Some(&CORRAL_CACHE_CONTROL));
        CachedResponse {
            headers,
            variant,
            keep_until,
            lifetime_nanos: nanos(lifetime.duration),
            initial_age_nanos: nanos(initial_age),
            response_time: timing.response_time,
            received_at: timing.received_at,
            rules: ReuseRules::new(&directives),
            status,
            has_validator,
            lifetime_source: lifetime.source,
        }
    }

    /// The whole body (never a truncated one), shared with the entry: a
    /// reference count, not a copy.
    pub fn body(&self) -> Bytes {
        self.headers.leading()
    }

    /// The body's length, without sharing it.
    pub fn body_len(&self) -> usize {
        self.headers.values_start()
    }

    /// Its freshness lifetime and the rule that produced it.
    pub fn lifetime(&self) -> Lifetime {
        Lifetime {
            duration: Duration::from_nanos(self.lifetime_nanos),
            source: self.lifetime_source,
        }
    }

    /// Its age when it arrived (`corrected_initial_age`).
    pub fn initial_age(&self) -> Duration {
        Duration::from_nanos(self.initial_age_nanos)
    }

    /// When its head arrived, on the wall clock, in whole seconds (the
    /// resolution of the `Date` it is compared with).
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// Until when it is fresh (local clock): when its current age reaches
    /// its lifetime.
    pub fn fresh_until(&self) -> Instant {
        policy::fresh_until(
            self.response_time,
            self.lifetime().duration,
            self.initial_age(),
        )
    }

    /// Its wire form ([`super::wire`]): everything another process needs to
    /// serve it and judge it fresh, with its stale windows as they apply
    /// under `policy` (the route it was stored for).
    pub fn to_wire(&self, policy: &FreshnessPolicy) -> WireEntry {
        let (stale_while_revalidate, stale_if_error) =
            stale_windows(&self.rules.directives(), self.lifetime(), policy);
        WireEntry {
            stored_at: self.received_at,
            initial_age: self.initial_age(),
            lifetime: self.lifetime().duration,
            stale_while_revalidate,
            stale_if_error,
            status: self.status,
            headers: self.origin_headers(),
            body: self.body(),
            variant: self.variant.to_wire(),
        }
    }

    /// The entry another process stored as `wire`, placed on this process's
    /// clock: it arrived `now_wall − stored_at` before `now` (no earlier than
    /// `now` if the clocks disagree), keeps the lifetime and initial age it
    /// was stored with, and is judged under `policy` (the route's) as any
    /// entry stored here.
    pub fn from_wire(
        wire: WireEntry,
        policy: &FreshnessPolicy,
        now: Instant,
        now_wall: SystemTime,
    ) -> CachedResponse {
        let since = now_wall.duration_since(wire.stored_at).unwrap_or_default();
        let arrived = now.checked_sub(since).unwrap_or(now);
        let timing = Timing {
            request_time: arrived,
            response_time: arrived,
            received_at: wire.stored_at,
        };
        let directives = ResponseDirectives::from_headers(&wire.headers);
        let source = policy::freshness_lifetime(
            wire.status,
            &wire.headers,
            &directives,
            wire.stored_at,
            policy,
        )
        .source;
        let lifetime = Lifetime::new(wire.lifetime, source);
        let stored = Stored {
            status: wire.status,
            headers: wire.headers,
            directives,
            body: wire.body,
            variant: Variant::from_wire(wire.variant),
        };
        CachedResponse::assemble(stored, timing, lifetime, wire.initial_age, policy)
    }

    /// The headers as the origin sent them (with `Corral-Cache-Control`), for
    /// comparing validators with a 304 and merging it in: one copy, which the
    /// caller then owns ([`policy::freshen_headers`] merges into it).
    pub fn origin_headers(&self) -> HeaderMap {
        let mut headers = self.headers.to_map_with_room(self.headers.hidden_len());
        for (name, value) in self.headers.hidden() {
            headers.append(name.clone(), value);
        }
        headers
    }

    /// Whether the entry is fresh at `now` (before any client's wishes):
    /// its current age is under its lifetime, as [`policy::reuse`] judges.
    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.freshness_left(self.current_age(now)).is_zero()
    }

    /// Its `current_age` at `now` (RFC 9111 §4.2.3).
    pub fn current_age(&self, now: Instant) -> Duration {
        policy::current_age(self.initial_age(), self.response_time, now)
    }

    /// How long past its freshness it is at `now` (zero while fresh).
    pub fn staleness(&self, now: Instant) -> Duration {
        self.current_age(now)
            .saturating_sub(self.lifetime().duration)
    }

    /// Whole seconds of age at `now`, for `Age`.
    pub fn age_secs(&self, now: Instant) -> u64 {
        self.current_age(now).as_secs()
    }

    /// Freshness left at `age` (its [`CachedResponse::current_age`]): zero
    /// once it is stale.
    pub fn freshness_left(&self, age: Duration) -> Duration {
        self.lifetime().duration.saturating_sub(age)
    }

    /// Whole seconds of freshness left at `now`.
    pub fn ttl_secs(&self, now: Instant) -> u64 {
        self.freshness_left(self.current_age(now)).as_secs()
    }

    /// Whether it may answer a request with `request` directives at `now`
    /// without the origin, or how it may be used while the origin is asked
    /// ([`policy::reuse`]).
    pub fn reuse(
        &self,
        now: Instant,
        request: &RequestDirectives,
        policy: &FreshnessPolicy,
    ) -> Reuse {
        self.reuse_at_age(self.current_age(now), request, policy)
    }

    /// [`CachedResponse::reuse`] for a caller that has its
    /// [`CachedResponse::current_age`] already: a hit reads the age once and
    /// judges and renders with it.
    pub fn reuse_at_age(
        &self,
        age: Duration,
        request: &RequestDirectives,
        policy: &FreshnessPolicy,
    ) -> Reuse {
        policy::reuse(
            &self.rules.directives(),
            self.lifetime(),
            age,
            request,
            policy,
        )
    }

    /// Whether it may be served stale when corral cannot reach the origin
    /// (breaker open, origin asked for a pause, overload): not when the
    /// origin forbade any stale use (`no-cache`, `must-revalidate`,
    /// `proxy-revalidate`, `s-maxage`; RFC 9111 §4.2.4, §5.2.2.2).
    pub fn may_serve_disconnected(&self) -> bool {
        let rules = &self.rules;
        !(rules.no_cache
            || rules.must_revalidate
            || rules.proxy_revalidate
            || self.lifetime_source == LifetimeSource::SMaxAge)
    }

    /// Bytes this entry is charged for in the cache budget: what it really
    /// takes from the allocator (its own allocation behind the `Arc`, the
    /// block holding its body and header values, its line array, the names
    /// it does not share, and the selecting values), checked by
    /// `tests/entry_memory.rs`.
    pub fn weight(&self) -> usize {
        let own = malloc_chunk(std::mem::size_of::<CachedResponse>() + 2 * size_of::<usize>());
        own + self.headers.heap_size() + self.variant.heap_size()
    }
}

/// The windows past freshness in which an entry may still be served stale,
/// (stale-while-revalidate, stale-if-error): the origin's, else the route's;
/// none when stale use is forbidden, and not the route's when `s-maxage`
/// implies `proxy-revalidate`.
fn stale_windows(
    directives: &ResponseDirectives,
    lifetime: Lifetime,
    policy: &FreshnessPolicy,
) -> (Duration, Duration) {
    if directives.no_cache.is_some() || directives.must_revalidate || directives.proxy_revalidate {
        return (Duration::ZERO, Duration::ZERO);
    }
    let implied_revalidate = lifetime.source == LifetimeSource::SMaxAge;
    let window = |origin: Option<Duration>, route: Option<Duration>| {
        origin
            .or(if implied_revalidate { None } else { route })
            .unwrap_or_default()
    };
    (
        window(
            directives.stale_while_revalidate,
            policy.stale_while_revalidate,
        ),
        window(directives.stale_if_error, policy.stale_if_error),
    )
}

/// `duration` in nanoseconds, saturating (at some 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// What a stored entry is made of before its freshness is placed on a clock.
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    directives: ResponseDirectives,
    body: Bytes,
    variant: Variant,
}

/// The request header values a stored variant was chosen by, per `Vary`
/// (RFC 9111 §4.1), and per the route's `forward_headers` (headers a fill
/// forwards, so they may shape the answer: they select it too). A request is
/// served this variant only if, for each header, it is absent in both or
/// present in both with the same value. `Vary` values are compared
/// normalised: list members across lines, whitespace trimmed and collapsed,
/// empty members ignored, `Accept*` members case-insensitively. Forwarded
/// headers are compared byte for byte, line by line: the origin saw exactly
/// those bytes.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Exact size, and no allocation at all for the usual empty one.
    selecting: Box<[Selecting]>,
}

/// One request header a variant was chosen by.
#[derive(Debug, Clone)]
struct Selecting {
    name: HeaderName,
    values: Vec<HeaderValue>,
    /// Compared byte for byte (a forwarded header) rather than normalised.
    exact: bool,
}

impl Variant {
    /// Records, for each header named by the response's `Vary`, and for each
    /// header in `forwarded`, the values the request carried.
    pub fn capture<'a>(
        vary: impl Iterator<Item = &'a str>,
        forwarded: &[HeaderName],
        request: &HeaderMap,
    ) -> Variant {
        let values_of =
            |name: &HeaderName| request.get_all(name).iter().map(detach_value).collect();
        let varied = vary
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .filter(|name| !forwarded.contains(name))
            .map(|name| Selecting {
                values: values_of(&name),
                name,
                exact: false,
            });
        let forwarded = forwarded.iter().map(|name| Selecting {
            values: values_of(name),
            name: name.clone(),
            exact: true,
        });
        Variant {
            selecting: varied.chain(forwarded).collect(),
        }
    }

    /// Its wire form: each selecting header with the values it was chosen by.
    pub fn to_wire(&self) -> Vec<WireSelecting> {
        self.selecting
            .iter()
            .map(|selecting| WireSelecting {
                name: selecting.name.clone(),
                values: selecting.values.clone(),
                exact: selecting.exact,
            })
            .collect()
    }

    /// The variant a wire form describes.
    pub fn from_wire(selecting: Vec<WireSelecting>) -> Variant {
        Variant {
            selecting: selecting
                .into_iter()
                .map(|wire| Selecting {
                    name: wire.name,
                    values: wire.values,
                    exact: wire.exact,
                })
                .collect(),
        }
    }

    /// Heap bytes it takes: its list, each header's value list and values.
    pub fn heap_size(&self) -> usize {
        let lists: usize = self
            .selecting
            .iter()
            .map(|s| {
                malloc_chunk(s.values.capacity() * size_of::<HeaderValue>())
                    + s.values
                        .iter()
                        .map(|v| malloc_chunk(v.len()))
                        .sum::<usize>()
                    + s.name.as_str().len()
            })
            .sum();
        malloc_chunk(std::mem::size_of_val(&*self.selecting)) + lists
    }

    /// Whether `request` selects this variant. Allocates nothing.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.selecting.iter().all(|selecting| {
            let stored = &selecting.values;
            let mut sent = request.get_all(&selecting.name).iter().peekable();
            match (stored.is_empty(), sent.peek().is_none()) {
                (true, true) => true,
                (true, false) | (false, true) => false,
                (false, false) if selecting.exact => stored.iter().eq(sent),
                (false, false) => same_list(&selecting.name, stored.iter(), sent),
            }
        })
    }
}

/// One piece of a normalised list value.
#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    /// Between two non-empty members.
    Comma,
    /// A run of non-whitespace bytes inside a member.
    Word(&'a [u8]),
}

/// A list field's lines as tokens: split at commas, members without content
/// dropped, each member split at whitespace runs.
fn list_tokens<'a>(
    lines: impl Iterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = Token<'a>> {
    lines
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .filter(|member| member.iter().any(|b| !b.is_ascii_whitespace()))
        .enumerate()
        .flat_map(|(index, member)| {
            let words = member
                .split(u8::is_ascii_whitespace)
                .filter(|word| !word.is_empty())
                .map(Token::Word);
            (index > 0).then_some(Token::Comma).into_iter().chain(words)
        })
}

/// Whether two sets of lines of the field `name` are the same list once
/// normalised.
fn same_list<'a>(
    name: &HeaderName,
    a: impl Iterator<Item = &'a HeaderValue>,
    b: impl Iterator<Item = &'a HeaderValue>,
) -> bool {
    let caseless = name.as_str().starts_with("accept");
    let mut a = list_tokens(a);
    let mut b = list_tokens(b);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(Token::Comma), Some(Token::Comma)) => {}
            (Some(Token::Word(x)), Some(Token::Word(y)))
                if x == y || (caseless && x.eq_ignore_ascii_case(y)) => {}
            _ => return false,
        }
    }
}
