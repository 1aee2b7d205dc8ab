//! The hot cache: complete responses held in memory, weighted by their bytes.
//!
//! A hit is a map lookup and an `Arc` clone. Freshness is decided on tokio's
//! clock from each entry's own `fresh_until`, so paused-time tests are exact;
//! moka's own expiry (on the std clock) only reclaims memory some time after an
//! entry can no longer be served.

pub mod freshness;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use tokio::time::Instant;

/// Extra time an entry stays in memory after its freshness ends, so that stale
/// serving (later) and in-flight readers can still find it.
pub const EVICTION_GRACE: Duration = Duration::from_secs(30);

/// Fixed per-entry overhead charged to the weigher (struct, map node, Arc).
const ENTRY_OVERHEAD: usize = 256;

/// A complete, shareable response. Immutable once stored: readers clone the `Arc`.
#[derive(Debug)]
pub struct CachedResponse {
    /// Status the origin answered with.
    pub status: StatusCode,
    /// End-to-end headers as they will be sent (hop-by-hop removed, `Via` added).
    pub headers: HeaderMap,
    /// The whole body; never a truncated one.
    pub body: Bytes,
    /// When the response was received from the origin.
    pub stored_at: Instant,
    /// Until when it may be served without contacting the origin.
    pub fresh_until: Instant,
    /// The request header values this variant was selected by (from `Vary`).
    pub variant: Variant,
}

impl CachedResponse {
    /// Whether the entry may be served as fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// Whole seconds since the origin produced this response, for `Age`.
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored_at).as_secs()
    }

    /// Whole seconds of freshness left at `now`.
    pub fn ttl_secs(&self, now: Instant) -> u64 {
        self.fresh_until.saturating_duration_since(now).as_secs()
    }

    /// Bytes this entry is charged for in the cache budget.
    pub fn weight(&self, key: &str) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        let total = ENTRY_OVERHEAD + key.len() + headers + self.body.len();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// The request header values a stored variant was chosen by, per `Vary`. A
/// request is served this variant only if its values for those headers match.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    selecting: Vec<(HeaderName, Vec<HeaderValue>)>,
}

impl Variant {
    /// Records, for each header named by the response's `Vary`, the values the
    /// request carried.
    pub fn capture<'a>(vary: impl Iterator<Item = &'a str>, request: &HeaderMap) -> Variant {
        let selecting = vary
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .map(|name| {
                let values = request.get_all(&name).iter().cloned().collect();
                (name, values)
            })
            .collect();
        Variant { selecting }
    }

    /// Whether `request` selects this variant.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.selecting
            .iter()
            .all(|(name, values)| request.get_all(name).iter().eq(values.iter()))
    }
}

/// Tells moka when it may reclaim an entry: after freshness plus a grace period.
struct EvictAfterFreshness;

impl Expiry<String, Arc<CachedResponse>> for EvictAfterFreshness {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let fresh_for = value.fresh_until.saturating_duration_since(Instant::now());
        Some(fresh_for + EVICTION_GRACE)
    }
}

/// Byte-bounded map from cache key to stored response. Cheap to clone; clones
/// share the same entries.
#[derive(Clone)]
pub struct HotCache {
    entries: Cache<String, Arc<CachedResponse>>,
}

impl HotCache {
    /// A cache that evicts (TinyLFU, by moka) once the weight of its entries
    /// passes `max_bytes`, calling `on_evicted_for_space` for each entry it
    /// pushes out to make room (not for expiries, replacements or purges).
    pub fn new(
        max_bytes: u64,
        on_evicted_for_space: impl Fn() + Send + Sync + 'static,
    ) -> HotCache {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| value.weight(key))
            .expire_after(EvictAfterFreshness)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    on_evicted_for_space();
                }
            })
            .build();
        HotCache { entries }
    }

    /// The entry stored under `key`, fresh or not; callers judge freshness.
    pub fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.entries.get(key)
    }

    /// Stores `entry` under `key`, replacing any previous variant. Visible to
    /// every later `get` as soon as this returns.
    pub fn insert(&self, key: String, entry: Arc<CachedResponse>) {
        self.entries.insert(key, entry);
    }

    /// Removes every entry whose path (the key without its host) equals one of
    /// `exact` or starts with one of `prefixes`; returns how many were removed.
    /// Walks the whole cache: an admin operation, not a request-path one.
    pub fn purge(&self, exact: &[String], prefixes: &[String]) -> usize {
        let doomed: Vec<Arc<String>> = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| {
                let path = key.find('/').map_or("", |at| &key[at..]);
                exact.iter().any(|e| e == path)
                    || prefixes.iter().any(|p| path.starts_with(p.as_str()))
            })
            .collect();
        for key in &doomed {
            self.entries.invalidate(key.as_str());
        }
        doomed.len()
    }

    /// Removes the entry under `key`, if any.
    pub fn invalidate(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Number of entries (approximate until pending maintenance runs).
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
    marks: Cache<String, Instant>,
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
    pub fn mark(&self, key: String, until: Instant) {
        self.marks.insert(key, until);
    }

    /// Whether `key` is marked as pass at `now`.
    pub fn is_marked(&self, key: &str, now: Instant) -> bool {
        self.marks.get(key).is_some_and(|until| now < until)
    }

    /// Forgets `key`'s mark (its answer became shareable again).
    pub fn clear(&self, key: &str) {
        self.marks.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8], fresh_for: Duration) -> Arc<CachedResponse> {
        let now = Instant::now();
        Arc::new(CachedResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            stored_at: now,
            fresh_until: now + fresh_for,
            variant: Variant::default(),
        })
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

    #[tokio::test]
    async fn cache_is_bounded_by_bytes() {
        let evicted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&evicted);
        let cache = HotCache::new(64 * 1024, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        static BODY: [u8; 1024] = [b'x'; 1024];
        for i in 0..1000 {
            cache.insert(format!("k{i}"), entry(&BODY, Duration::from_secs(60)));
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
        let cache = HotCache::new(1 << 20, || {});
        for key in [
            "a.example/p/1",
            "b.example/p/1",
            "a.example/p/2",
            "a.example/q/1",
        ] {
            cache.insert(key.to_owned(), entry(b"x", Duration::from_secs(60)));
        }
        assert_eq!(cache.purge(&["/p/1".to_owned()], &[]), 2);
        assert!(cache.get("a.example/p/2").is_some());
        assert_eq!(cache.purge(&[], &["/q/".to_owned()]), 1);
        assert!(cache.get("a.example/q/1").is_none());
        assert!(cache.get("a.example/p/2").is_some());
    }

    #[test]
    fn weight_counts_key_headers_and_body() {
        let stored = entry(&[0; 100], Duration::ZERO);
        assert_eq!(stored.weight("key"), (ENTRY_OVERHEAD + 3 + 100) as u32);
    }

    #[test]
    fn variant_matches_only_the_same_selecting_values() {
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let variant = Variant::capture(["Accept-Encoding"].into_iter(), &gzip);
        assert!(variant.matches(&gzip));
        assert!(!variant.matches(&HeaderMap::new()));
        let mut br = HeaderMap::new();
        br.insert("accept-encoding", HeaderValue::from_static("br"));
        assert!(!variant.matches(&br));
        assert!(Variant::default().matches(&br));
    }

    #[tokio::test(start_paused = true)]
    async fn pass_marks_expire_on_tokio_time() {
        let marks = PassMarks::new(10);
        marks.mark("k".into(), Instant::now() + Duration::from_secs(5));
        assert!(marks.is_marked("k", Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!marks.is_marked("k", Instant::now()));
    }
}
