//! The hot cache: complete responses held in memory, weighted by their bytes,
//! grouped per URL into the variants its `Vary` selects between.
//!
//! A hit is a map lookup, a walk over the URL's few variants and an `Arc`
//! clone. Everything a hit needs to decide freshness (directives, lifetime,
//! initial age, validators, stale windows) is computed once when the response
//! is stored ([`CachedResponse::new`]); freshness is then decided on tokio's
//! clock, so paused-time tests are exact. moka's own expiry (on the std clock)
//! only reclaims memory once an entry can no longer be served, stale windows
//! included ([`CachedResponse::keep_until`]).

pub mod key;
pub mod policy;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::time::Instant;

pub use key::CacheKey;

use crate::config::FreshnessPolicy;
use crate::http::directives::{CORRAL_CACHE_CONTROL, RequestDirectives, ResponseDirectives};
use policy::{Lifetime, LifetimeSource, Reuse};

/// Extra time an entry stays in memory after it can last be served (its
/// freshness plus its longest stale window), so in-flight readers, a breaker
/// that keeps the origin out, and clients' `max-stale` can still find it.
pub const EVICTION_GRACE: Duration = Duration::from_secs(30);

/// Fixed per-entry overhead charged to the weigher (struct, map node, Arc).
const ENTRY_OVERHEAD: usize = 256;

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
/// revalidation stores a new one ([`CachedResponse::freshened`]).
#[derive(Debug)]
pub struct CachedResponse {
    /// Status the origin answered with.
    pub status: StatusCode,
    /// End-to-end headers as they will be sent: hop-by-hop removed, `Via`
    /// added, `Corral-Cache-Control` (corral's own) removed.
    pub headers: HeaderMap,
    /// The whole body; never a truncated one.
    pub body: Bytes,
    /// The request header values this variant was selected by (from `Vary`).
    pub variant: Variant,
    /// The cache directives of the field that governs the response.
    pub directives: ResponseDirectives,
    /// Its freshness lifetime and the rule that produced it.
    pub lifetime: Lifetime,
    /// When it arrived.
    pub timing: Timing,
    /// Its age when it arrived (`corrected_initial_age`).
    pub initial_age: Duration,
    /// Until when it is fresh (local clock).
    pub fresh_until: Instant,
    /// Whether it carries a validator, so it can be revalidated with a
    /// conditional request.
    pub has_validator: bool,
    /// Until when it may be needed: freshness, plus the longest stale window
    /// that may apply, plus [`EVICTION_GRACE`]. moka reclaims it afterwards.
    pub keep_until: Instant,
    /// The `Corral-Cache-Control` lines it came with, kept apart from
    /// `headers` so clients never see them but a 304 can be merged with them.
    corral_cache_control: Vec<HeaderValue>,
}

/// Copies every header value into its own exact-size allocation. Values parsed
/// by hyper are slices of the connection's read buffer: stored as they are,
/// each entry would keep a whole buffer (8 KiB or more) alive, unseen by the
/// byte budget.
fn detach(headers: HeaderMap) -> HeaderMap {
    let mut detached = HeaderMap::with_capacity(headers.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in headers {
        if let Some(name) = name {
            current = Some(name);
        }
        if let Some(name) = &current {
            detached.append(name.clone(), detach_value(&value));
        }
    }
    detached
}

fn detach_value(value: &HeaderValue) -> HeaderValue {
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
    /// `Corral-Cache-Control` is taken out of them here, and their values are
    /// copied out of any read buffer they point into. `body` must already own
    /// exactly its bytes (not be a slice of a larger buffer): whoever joins
    /// the body's chunks makes that copy, once.
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
        let fresh_until = policy::fresh_until(timing.response_time, lifetime.duration, initial_age);
        let window = longest_stale_window(&directives, lifetime, policy);
        let keep_until = fresh_until
            .checked_add(window.saturating_add(EVICTION_GRACE))
            .unwrap_or(fresh_until);
        let has_validator = policy::has_validator(&headers);
        let mut headers = detach(headers);
        let corral_cache_control = match headers.entry(&CORRAL_CACHE_CONTROL) {
            http::header::Entry::Occupied(lines) => lines.remove_entry_mult().1.collect(),
            http::header::Entry::Vacant(_) => Vec::new(),
        };
        CachedResponse {
            status,
            headers,
            body,
            variant,
            directives,
            lifetime,
            timing,
            initial_age,
            fresh_until,
            has_validator,
            keep_until,
            corral_cache_control,
        }
    }

    /// The headers as the origin sent them (with `Corral-Cache-Control`), for
    /// comparing validators with a 304 and merging it in: one copy, which the
    /// caller then owns ([`policy::freshen_headers`] merges into it).
    pub fn origin_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        for line in &self.corral_cache_control {
            headers.append(CORRAL_CACHE_CONTROL.clone(), line.clone());
        }
        headers
    }

    /// Whether the entry is fresh at `now` (before any client's wishes).
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// Its `current_age` at `now` (RFC 9111 §4.2.3).
    pub fn current_age(&self, now: Instant) -> Duration {
        policy::current_age(self.initial_age, self.timing.response_time, now)
    }

    /// Whole seconds of age at `now`, for `Age`.
    pub fn age_secs(&self, now: Instant) -> u64 {
        self.current_age(now).as_secs()
    }

    /// Whole seconds of freshness left at `now`.
    pub fn ttl_secs(&self, now: Instant) -> u64 {
        self.fresh_until.saturating_duration_since(now).as_secs()
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
        policy::reuse(
            &self.directives,
            self.lifetime,
            self.current_age(now),
            request,
            policy,
        )
    }

    /// Whether it may be served stale when corral cannot reach the origin
    /// (breaker open, origin asked for a pause, overload): not when the
    /// origin forbade any stale use (`no-cache`, `must-revalidate`,
    /// `proxy-revalidate`, `s-maxage`; RFC 9111 §4.2.4, §5.2.2.2).
    pub fn may_serve_disconnected(&self) -> bool {
        let directives = &self.directives;
        !(directives.no_cache.is_some()
            || directives.must_revalidate
            || directives.proxy_revalidate
            || self.lifetime.source == LifetimeSource::SMaxAge)
    }

    /// Bytes this entry is charged for in the cache budget.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        ENTRY_OVERHEAD + headers + self.body.len()
    }
}

/// The longest time past freshness an entry may still be served stale (the
/// origin's windows, else the route's; none when stale use is forbidden).
fn longest_stale_window(
    directives: &ResponseDirectives,
    lifetime: Lifetime,
    policy: &FreshnessPolicy,
) -> Duration {
    if directives.no_cache.is_some() || directives.must_revalidate || directives.proxy_revalidate {
        return Duration::ZERO;
    }
    let implied_revalidate = lifetime.source == LifetimeSource::SMaxAge;
    let window = |origin: Option<Duration>, route: Option<Duration>| {
        origin
            .or(if implied_revalidate { None } else { route })
            .unwrap_or_default()
    };
    window(
        directives.stale_while_revalidate,
        policy.stale_while_revalidate,
    )
    .max(window(directives.stale_if_error, policy.stale_if_error))
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
    selecting: Vec<Selecting>,
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

/// The stored variants of one URL, most recently stored first.
#[derive(Debug, Default)]
struct Variants {
    entries: Vec<Arc<CachedResponse>>,
}

impl Variants {
    fn weight(&self, key: &CacheKey) -> u32 {
        let total: usize =
            key.as_str().len() + self.entries.iter().map(|e| e.weight()).sum::<usize>();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// When the last of them may be dropped.
    fn keep_until(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.keep_until).max()
    }
}

/// Tells moka when it may reclaim a URL's variants: once none of them can be
/// served any more (see [`CachedResponse::keep_until`]).
struct EvictWhenUnservable;

impl EvictWhenUnservable {
    fn remaining(value: &Variants) -> Option<Duration> {
        let until = value.keep_until()?;
        Some(until.saturating_duration_since(Instant::now()))
    }
}

impl Expiry<CacheKey, Arc<Variants>> for EvictWhenUnservable {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Variants>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Self::remaining(value).or(Some(Duration::ZERO))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Variants>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value).or(Some(Duration::ZERO))
    }
}

/// Byte-bounded map from primary cache key (host, path and query) to the
/// variants stored for it. Cheap to clone; clones share the same entries.
#[derive(Clone)]
pub struct HotCache {
    entries: Cache<CacheKey, Arc<Variants>>,
    max_variants: usize,
}

impl HotCache {
    /// A cache that evicts (TinyLFU, by moka) once the weight of its entries
    /// passes `max_bytes`, keeps at most `max_variants` (at least 1) variants
    /// per key, and calls `on_evicted_for_space` for each key it pushes out to
    /// make room (not for expiries, replacements or purges).
    pub fn new(
        max_bytes: u64,
        max_variants: usize,
        on_evicted_for_space: impl Fn() + Send + Sync + 'static,
    ) -> HotCache {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, value: &Arc<Variants>| value.weight(key))
            .expire_after(EvictWhenUnservable)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    on_evicted_for_space();
                }
            })
            .build();
        HotCache {
            entries,
            max_variants: max_variants.max(1),
        }
    }

    /// The most recently stored variant under `key`, fresh or not, whatever
    /// request it was selected by (for tests of variant order; requests use
    /// [`HotCache::select`]).
    #[cfg(test)]
    fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.entries.get(key)?.entries.first().cloned()
    }

    /// The most recently stored variant under `key` that `request` selects,
    /// fresh or not; callers judge freshness.
    pub fn select(&self, key: &CacheKey, request: &HeaderMap) -> Option<Arc<CachedResponse>> {
        let variants = self.entries.get(key)?;
        variants
            .entries
            .iter()
            .find(|entry| entry.variant.matches(request))
            .cloned()
    }

    /// Number of variants stored under `key`.
    pub fn variant_count(&self, key: &CacheKey) -> usize {
        self.entries.get(key).map_or(0, |v| v.entries.len())
    }

    /// Stores `entry`, fetched for `request`, under `key`: it replaces every
    /// variant `request` selected, goes first, and the oldest variants beyond
    /// `max_variants` (and any that can no longer be served) are dropped.
    /// Atomic per key; visible to every later lookup once this returns.
    pub fn insert(&self, key: CacheKey, entry: Arc<CachedResponse>, request: &HeaderMap) {
        let now = Instant::now();
        let max_variants = self.max_variants;
        self.entries.entry(key).and_compute_with(|existing| {
            let mut entries = Vec::with_capacity(max_variants.min(8));
            entries.push(entry);
            if let Some(existing) = existing {
                let kept = existing
                    .value()
                    .entries
                    .iter()
                    .filter(|old| !old.variant.matches(request) && old.keep_until > now);
                entries.extend(kept.take(max_variants - 1).cloned());
            }
            Op::Put(Arc::new(Variants { entries }))
        });
    }

    /// Removes `entry` from the variants under `key`, if it is still stored
    /// there (a newer one stored since is left alone).
    pub fn remove_variant(&self, key: &CacheKey, entry: &Arc<CachedResponse>) {
        self.entries
            .entry(key.clone())
            .and_compute_with(|existing| {
                let Some(existing) = existing else {
                    return Op::Nop;
                };
                let variants = existing.value();
                if !variants.entries.iter().any(|e| Arc::ptr_eq(e, entry)) {
                    return Op::Nop;
                }
                let entries: Vec<_> = variants
                    .entries
                    .iter()
                    .filter(|e| !Arc::ptr_eq(e, entry))
                    .cloned()
                    .collect();
                if entries.is_empty() {
                    Op::Remove
                } else {
                    Op::Put(Arc::new(Variants { entries }))
                }
            });
    }

    /// Removes every entry whose path and query (on any authority) equals one
    /// of `exact` or starts with one of `prefixes`; returns how many keys were
    /// removed. Walks the whole cache: an admin operation, not a request-path one.
    pub fn purge(&self, exact: &[String], prefixes: &[String]) -> usize {
        let doomed: Vec<Arc<CacheKey>> = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| {
                let path = key.path_and_query();
                exact.iter().any(|e| e == path)
                    || prefixes.iter().any(|p| path.starts_with(p.as_str()))
            })
            .collect();
        for key in &doomed {
            self.entries.invalidate(key.as_ref());
        }
        doomed.len()
    }

    /// Removes every variant stored under `key`, if any.
    pub fn invalidate(&self, key: &CacheKey) {
        self.entries.invalidate(key);
    }

    /// Number of keys (approximate until pending maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Total weight in bytes (approximate until pending maintenance runs).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Applies pending inserts and evictions so the counts above are exact.
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }
}

/// Keys recently answered with something unshareable: requests for them go
/// straight to the origin instead of queueing behind a flight that cannot help
/// them (hit-for-pass). Bounded in entries; marks expire on tokio's clock.
#[derive(Clone)]
pub struct PassMarks {
    marks: Cache<CacheKey, Instant>,
}

impl PassMarks {
    /// At most `capacity` keys are remembered; the least useful are forgotten first.
    pub fn new(capacity: u64) -> PassMarks {
        PassMarks {
            marks: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Marks `key` as pass until `until`.
    pub fn mark(&self, key: CacheKey, until: Instant) {
        self.marks.insert(key, until);
    }

    /// Whether `key` is marked as pass at `now`.
    pub fn is_marked(&self, key: &CacheKey, now: Instant) -> bool {
        self.marks.get(key).is_some_and(|until| now < until)
    }

    /// Forgets `key`'s mark (its answer became shareable again).
    pub fn clear(&self, key: &CacheKey) {
        self.marks.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry built as a fill builds one: its directives parsed once.
    fn entry_from(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        variant: Variant,
        timing: Timing,
        policy: &FreshnessPolicy,
    ) -> CachedResponse {
        let directives = ResponseDirectives::from_headers(&headers);
        CachedResponse::new(status, headers, directives, body, variant, timing, policy)
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::new("test.example", path)
    }

    #[test]
    fn stored_header_values_never_point_into_the_read_buffer() {
        let read_buffer = Bytes::from(vec![b'x'; 8192]);
        let value = HeaderValue::from_maybe_shared(read_buffer.slice(10..20)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-slice", value.clone());
        let detached = detach(headers);
        let stored = detached.get("x-slice").unwrap();
        assert_eq!(stored, &value);
        let buffer = read_buffer.as_ptr_range();
        assert!(!buffer.contains(&stored.as_bytes().as_ptr()));
    }

    fn timing() -> Timing {
        let now = Instant::now();
        Timing::new(now, now, SystemTime::now())
    }

    fn entry_with(
        body: &'static [u8],
        fresh_for: Duration,
        variant: Variant,
    ) -> Arc<CachedResponse> {
        Arc::new(entry_from(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            variant,
            timing(),
            &FreshnessPolicy::with_ttl(fresh_for),
        ))
    }

    fn entry(body: &'static [u8], fresh_for: Duration) -> Arc<CachedResponse> {
        entry_with(body, fresh_for, Variant::default())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[tokio::test(start_paused = true)]
    async fn entry_is_fresh_until_its_ttl_then_stale() {
        let stored = entry(b"x", Duration::from_secs(30));
        assert!(stored.is_fresh(Instant::now()));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(stored.is_fresh(Instant::now()));
        assert_eq!(stored.age_secs(Instant::now()), 29);
        assert_eq!(stored.ttl_secs(Instant::now()), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!stored.is_fresh(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn entry_computes_freshness_from_its_headers_once() {
        let now = Instant::now();
        let origin = headers(&[
            ("cache-control", "max-age=10, stale-if-error=100"),
            (
                "corral-cache-control",
                "max-age=60, stale-while-revalidate=5",
            ),
            ("age", "20"),
            ("etag", "\"v1\""),
        ]);
        let stored = entry_from(
            StatusCode::OK,
            origin,
            Bytes::new(),
            Variant::default(),
            Timing::new(now, now, SystemTime::now()),
            &FreshnessPolicy::with_ttl(Duration::from_secs(1)),
        );
        // Corral-Cache-Control governs, and is kept away from clients.
        assert_eq!(stored.lifetime.duration, Duration::from_secs(60));
        assert!(!stored.headers.contains_key(&CORRAL_CACHE_CONTROL));
        assert_eq!(
            stored.origin_headers()[&CORRAL_CACHE_CONTROL],
            "max-age=60, stale-while-revalidate=5"
        );
        // The upstream Age counts: 40 s of freshness left.
        assert_eq!(stored.age_secs(now), 20);
        assert_eq!(stored.ttl_secs(now), 40);
        assert!(stored.has_validator);
        // Kept for the targeted field's stale window (not Cache-Control's) and the grace.
        assert_eq!(
            stored.keep_until - now,
            Duration::from_secs(40 + 5) + EVICTION_GRACE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn must_revalidate_entry_is_kept_only_for_the_grace() {
        let now = Instant::now();
        let policy = FreshnessPolicy {
            stale_while_revalidate: Some(Duration::from_secs(100)),
            ..FreshnessPolicy::with_ttl(Duration::from_secs(1))
        };
        let strict = entry_from(
            StatusCode::OK,
            headers(&[("cache-control", "max-age=10, must-revalidate")]),
            Bytes::new(),
            Variant::default(),
            Timing::new(now, now, SystemTime::now()),
            &policy,
        );
        assert_eq!(
            strict.keep_until - now,
            Duration::from_secs(10) + EVICTION_GRACE
        );
        assert!(!strict.may_serve_disconnected());
        let relaxed = entry_from(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            Variant::default(),
            Timing::new(now, now, SystemTime::now()),
            &policy,
        );
        assert_eq!(
            relaxed.keep_until - now,
            Duration::from_secs(101) + EVICTION_GRACE
        );
        assert!(relaxed.may_serve_disconnected());
    }

    #[tokio::test(start_paused = true)]
    async fn longest_lifetimes_and_windows_neither_overflow_nor_expire_early() {
        let cache = HotCache::new(1 << 20, 8, || {});
        let stored = Arc::new(entry_from(
            StatusCode::OK,
            headers(&[(
                "cache-control",
                "max-age=99999999999, stale-while-revalidate=99999999999, stale-if-error=99999999999",
            )]),
            Bytes::new(),
            Variant::default(),
            timing(),
            &FreshnessPolicy::with_ttl(Duration::ZERO),
        ));
        assert_eq!(
            stored.lifetime.duration,
            crate::http::directives::DELTA_SECONDS_MAX
        );
        cache.insert(key("/k"), stored, &HeaderMap::new());
        cache.run_pending_tasks();
        assert_eq!(cache.variant_count(&key("/k")), 1);
    }

    #[tokio::test]
    async fn cache_is_bounded_by_bytes() {
        let evicted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&evicted);
        let cache = HotCache::new(64 * 1024, 8, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        static BODY: [u8; 1024] = [b'x'; 1024];
        for i in 0..1000 {
            cache.insert(
                key(&format!("/k{i}")),
                entry(&BODY, Duration::from_secs(60)),
                &HeaderMap::new(),
            );
        }
        cache.run_pending_tasks();
        assert!(
            cache.weighted_size() <= 64 * 1024,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() < 1000);
        assert!(evicted.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }

    #[test]
    fn purge_matches_paths_exactly_or_by_prefix_across_hosts() {
        let cache = HotCache::new(1 << 20, 8, || {});
        for (host, path) in [
            ("a.example", "/p/1"),
            ("b.example", "/p/1"),
            ("a.example", "/p/2"),
            ("a.example", "/q/1"),
        ] {
            cache.insert(
                CacheKey::new(host, path),
                entry(b"x", Duration::from_secs(60)),
                &HeaderMap::new(),
            );
        }
        assert_eq!(cache.purge(&["/p/1".to_owned()], &[]), 2);
        assert!(cache.get(&CacheKey::new("a.example", "/p/2")).is_some());
        assert_eq!(cache.purge(&[], &["/q/".to_owned()]), 1);
        assert!(cache.get(&CacheKey::new("a.example", "/q/1")).is_none());
        assert!(cache.get(&CacheKey::new("a.example", "/p/2")).is_some());
    }

    #[test]
    fn weight_counts_key_headers_and_body() {
        let stored = entry(&[0; 100], Duration::ZERO);
        let variants = Variants {
            entries: vec![Arc::clone(&stored), stored],
        };
        let key = key("/k");
        assert_eq!(
            variants.weight(&key),
            (key.as_str().len() + 2 * (ENTRY_OVERHEAD + 100)) as u32
        );
    }

    #[test]
    fn variant_matches_only_the_same_selecting_values() {
        let gzip = headers(&[("accept-encoding", "gzip")]);
        let variant = Variant::capture(["Accept-Encoding"].into_iter(), &[], &gzip);
        assert!(variant.matches(&gzip));
        assert!(!variant.matches(&HeaderMap::new()));
        let br = headers(&[("accept-encoding", "br")]);
        assert!(!variant.matches(&br));
        assert!(Variant::default().matches(&br));
        // Absent only matches absent.
        let none = Variant::capture(["accept-encoding"].into_iter(), &[], &HeaderMap::new());
        assert!(none.matches(&HeaderMap::new()));
        assert!(!none.matches(&gzip));
    }

    #[test]
    fn variant_values_are_normalised() {
        let stored = headers(&[("accept-language", "en-GB,  fr;q=0.5")]);
        let variant = Variant::capture(["accept-language"].into_iter(), &[], &stored);
        for same in [
            &[("accept-language", "en-GB, fr;q=0.5")][..],
            &[("accept-language", " EN-gb ,fr;q=0.5 ,")][..],
            &[
                ("accept-language", "en-GB"),
                ("accept-language", "fr;q=0.5"),
            ][..],
        ] {
            assert!(variant.matches(&headers(same)), "{same:?}");
        }
        for other in [
            &[("accept-language", "en-GB")][..],
            &[("accept-language", "fr;q=0.5, en-GB")][..],
            &[("accept-language", "en-GB, fr; q=0.5")][..],
        ] {
            assert!(!variant.matches(&headers(other)), "{other:?}");
        }
        // Outside Accept*, case matters.
        let tenant = Variant::capture(
            ["x-tenant"].into_iter(),
            &[],
            &headers(&[("x-tenant", "Acme")]),
        );
        assert!(tenant.matches(&headers(&[("x-tenant", "  Acme ")])));
        assert!(!tenant.matches(&headers(&[("x-tenant", "acme")])));
    }

    fn language(tag: &'static str) -> HeaderMap {
        headers(&[("accept-language", tag)])
    }

    fn variant_for(tag: &'static str, body: &'static [u8]) -> Arc<CachedResponse> {
        entry_with(
            body,
            Duration::from_secs(60),
            Variant::capture(["accept-language"].into_iter(), &[], &language(tag)),
        )
    }

    #[test]
    fn variants_are_kept_apart_and_replaced_per_selection() {
        let cache = HotCache::new(1 << 20, 8, || {});
        cache.insert(key("/k"), variant_for("en", b"en-1"), &language("en"));
        cache.insert(key("/k"), variant_for("fr", b"fr-1"), &language("fr"));
        assert_eq!(
            cache.select(&key("/k"), &language("en")).unwrap().body,
            "en-1"
        );
        assert_eq!(
            cache.select(&key("/k"), &language("fr")).unwrap().body,
            "fr-1"
        );
        assert!(cache.select(&key("/k"), &language("de")).is_none());
        cache.insert(key("/k"), variant_for("en", b"en-2"), &language("en"));
        assert_eq!(cache.variant_count(&key("/k")), 2);
        assert_eq!(
            cache.select(&key("/k"), &language("en")).unwrap().body,
            "en-2"
        );
        assert_eq!(cache.get(&key("/k")).unwrap().body, "en-2");
    }

    #[test]
    fn variants_beyond_the_cap_drop_the_oldest() {
        let cache = HotCache::new(1 << 20, 2, || {});
        for (tag, body) in [("en", b"en"), ("fr", b"fr"), ("de", b"de")] {
            cache.insert(key("/k"), variant_for(tag, body), &language(tag));
        }
        assert_eq!(cache.variant_count(&key("/k")), 2);
        assert!(cache.select(&key("/k"), &language("en")).is_none());
        assert!(cache.select(&key("/k"), &language("fr")).is_some());
        assert!(cache.select(&key("/k"), &language("de")).is_some());
    }

    #[test]
    fn remove_variant_removes_only_that_entry() {
        let cache = HotCache::new(1 << 20, 8, || {});
        let en = variant_for("en", b"en");
        cache.insert(key("/k"), Arc::clone(&en), &language("en"));
        cache.insert(key("/k"), variant_for("fr", b"fr"), &language("fr"));
        cache.remove_variant(&key("/k"), &en);
        assert_eq!(cache.variant_count(&key("/k")), 1);
        // Already gone: nothing happens.
        cache.remove_variant(&key("/k"), &en);
        assert_eq!(cache.variant_count(&key("/k")), 1);
        let fr = cache.select(&key("/k"), &language("fr")).unwrap();
        cache.remove_variant(&key("/k"), &fr);
        assert_eq!(cache.variant_count(&key("/k")), 0);
        assert!(cache.get(&key("/k")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn pass_marks_expire_on_tokio_time() {
        let marks = PassMarks::new(10);
        marks.mark(key("/k"), Instant::now() + Duration::from_secs(5));
        assert!(marks.is_marked(&key("/k"), Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!marks.is_marked(&key("/k"), Instant::now()));
    }
}
