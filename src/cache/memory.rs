//! The in-process tier (L1): a byte-weighted moka cache of per-URL variant
//! sets, and the hit-for-pass marks. A hit is a map lookup, a walk over the
//! URL's few variants and an `Arc` clone.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::time::Instant;

use super::entry::CachedResponse;
use super::key::CacheKey;

/// The stored variants of one URL, most recently stored first.
#[derive(Debug, Default)]
pub(super) struct Variants {
    pub(super) entries: Vec<Arc<CachedResponse>>,
}

impl Variants {
    pub(super) fn weight(&self, key: &CacheKey) -> u32 {
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
    pub(super) fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
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
