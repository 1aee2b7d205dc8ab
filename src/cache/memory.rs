//! The in-process tier (L1): a byte-weighted cache of per-URL variant sets
//! (quick_cache), and the hit-for-pass marks (moka). A hit is a shard's read
//! lock, a hash lookup, a walk over the URL's few variants and an `Arc` clone.
//!
//! # Why quick_cache, not moka, for the entries
//!
//! A stored object is usually small (a JSON document, a page), so what the
//! cache spends on each entry besides the response decides how many fit in
//! the budget. moka spent about 375 bytes per entry (its own `Arc`s around
//! key and value, access- and write-order deque nodes, timer-wheel node,
//! frequency sketch) and recorded every read in a channel it drains later;
//! quick_cache keeps key and value inline in a slab with a 4-byte index slot
//! (about 80 bytes per entry, ghosts included) and a read only marks the
//! entry referenced. Its eviction (CLOCK-PRO, close to S3-FIFO) is scan
//! resistant, as moka's TinyLFU was.
//!
//! quick_cache has no expiry of its own: an entry that can no longer be
//! served ([`CachedResponse::keep_until`]) is treated as absent by every
//! lookup and removed then, and [`HotCache::sweep`] drops the rest: the
//! first insert after [`SWEEP_INTERVAL`] has passed runs it, so a cache that
//! no longer takes new entries keeps its dead ones only until it does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderMap;
use moka::sync::Cache;
use quick_cache::sync::{EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use tokio::time::Instant;

use super::entry::{CachedResponse, malloc_chunk};
use super::key::CacheKey;

/// The stored variants of one URL, most recently stored first. Most URLs
/// have one, held as it is: a list would be an allocation (32 bytes) more
/// per URL, and a wider slot besides.
#[derive(Clone)]
pub(super) enum Variants {
    /// The only variant.
    One(Arc<CachedResponse>),
    /// Two or more, in one exact-size list behind one pointer, so the slot
    /// stays as narrow as for [`Variants::One`].
    Many(Arc<Box<[Arc<CachedResponse>]>>),
}

impl Variants {
    /// `first` followed by `rest`.
    pub(super) fn new(first: Arc<CachedResponse>, rest: Vec<Arc<CachedResponse>>) -> Variants {
        if rest.is_empty() {
            return Variants::One(first);
        }
        let list: Box<[_]> = std::iter::once(first).chain(rest).collect();
        Variants::Many(Arc::new(list))
    }

    /// The variants, most recently stored first.
    pub(super) fn as_slice(&self) -> &[Arc<CachedResponse>] {
        match self {
            Variants::One(entry) => std::slice::from_ref(entry),
            Variants::Many(list) => list,
        }
    }

    /// Whether `self` and `other` are the same stored value (not merely
    /// equal ones).
    fn same(&self, other: &Variants) -> bool {
        match (self, other) {
            (Variants::One(a), Variants::One(b)) => Arc::ptr_eq(a, b),
            (Variants::Many(a), Variants::Many(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Heap bytes the list itself takes besides its entries: none for one
    /// variant; for more, the `Arc` and the exact-size slice it points to.
    fn list_size(&self) -> usize {
        match self {
            Variants::One(_) => 0,
            Variants::Many(list) => {
                malloc_chunk(size_of::<Box<[Arc<CachedResponse>]>>() + 2 * size_of::<usize>())
                    + malloc_chunk(std::mem::size_of_val(&**list))
            }
        }
    }
}

/// Bytes one URL's variants are charged for: each entry's own weight, the
/// key's, the list's, and what the cache spends on the slot that holds them.
pub(super) fn variants_weight(key: &CacheKey, variants: &Variants) -> u64 {
    let entries: usize = variants.as_slice().iter().map(|e| e.weight()).sum();
    let slot = SLOT_OVERHEAD + key.heap_size() + variants.list_size();
    u64::try_from(entries + slot).unwrap_or(u64::MAX)
}

/// What the cache spends per URL beyond its entries, its key's own heap
/// bytes and its variant list: the slab slot, its index and ghost share
/// (measured by `tests/entry_memory.rs`).
const SLOT_OVERHEAD: usize = 80;

/// Whether one of `variants` may still be served at `now`.
fn servable(variants: &Variants, now: Instant) -> bool {
    variants.as_slice().iter().any(|e| e.keep_until > now)
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<CacheKey, Variants> for ByBytes {
    fn weight(&self, key: &CacheKey, variants: &Variants) -> u64 {
        // Zero would mean "never evict"; every entry costs something.
        variants_weight(key, variants).max(1)
    }
}

/// Counts the URLs pushed out to make room.
#[derive(Clone)]
struct CountEvictions(Arc<dyn Fn() + Send + Sync>);

impl Lifecycle<CacheKey, Variants> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: CacheKey, _variants: Variants) {
        (self.0)();
    }
}

type Entries = quick_cache::sync::Cache<
    CacheKey,
    Variants,
    ByBytes,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// Smallest byte budget a shard gets: a shard refuses anything heavier than
/// its own budget, so shards must stay well above the largest object.
const MIN_SHARD_BYTES: u64 = 64 * 1024 * 1024;

/// Byte-bounded map from primary cache key (host, path and query) to the
/// variants stored for it. Cheap to clone; clones share the same entries.
#[derive(Clone)]
pub struct HotCache {
    entries: Arc<Entries>,
    max_variants: usize,
    /// When the last sweep ran (or the cache was made).
    swept: Arc<Mutex<Instant>>,
}

/// Least time between two sweeps of unservable entries.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl HotCache {
    /// A cache that evicts (CLOCK-PRO, by quick_cache) once the weight of its
    /// entries passes `max_bytes`, keeps at most `max_variants` (at least 1)
    /// variants per key, and calls `on_evicted_for_space` for each key it
    /// pushes out to make room (not for expiries, replacements or purges).
    pub fn new(
        max_bytes: u64,
        max_variants: usize,
        on_evicted_for_space: impl Fn() + Send + Sync + 'static,
    ) -> HotCache {
        let shards = (max_bytes / MIN_SHARD_BYTES).clamp(1, 64);
        let options = OptionsBuilder::new()
            // A guess at the number of entries, for the initial tables; they grow.
            .estimated_items_capacity(
                usize::try_from(max_bytes / 4096)
                    .unwrap_or(1 << 20)
                    .clamp(64, 1 << 20),
            )
            .weight_capacity(max_bytes.max(1))
            .shards(usize::try_from(shards).unwrap_or(1))
            .build();
        let lifecycle = CountEvictions(Arc::new(on_evicted_for_space));
        let entries = match options {
            Ok(options) => Entries::with_options(options, ByBytes, Default::default(), lifecycle),
            // Only out-of-range numbers are refused, and every one above is in range.
            Err(_) => Entries::with(64, max_bytes.max(1), ByBytes, Default::default(), lifecycle),
        };
        HotCache {
            entries: Arc::new(entries),
            max_variants: max_variants.max(1),
            swept: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// The servable variants under `key` at `now`; removes them if none is.
    fn servable(&self, key: &str, now: Instant) -> Option<Variants> {
        let variants = self.entries.get(key)?;
        if servable(&variants, now) {
            return Some(variants);
        }
        self.entries
            .remove_if(key, |current| current.same(&variants));
        None
    }

    /// The most recently stored variant under `key`, fresh or not, whatever
    /// request it was selected by (for tests of variant order; requests use
    /// [`HotCache::select`]).
    #[cfg(test)]
    pub(super) fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.servable(key.as_str(), Instant::now())?
            .as_slice()
            .first()
            .cloned()
    }

    /// The most recently stored variant under `key` that `request` selects,
    /// fresh or not; callers judge freshness.
    pub fn select(&self, key: &CacheKey, request: &HeaderMap) -> Option<Arc<CachedResponse>> {
        self.select_at(key.as_str(), request, Instant::now())
    }

    /// [`HotCache::select`] by the key's encoded form
    /// ([`CacheKey::as_str`]) as of `now`, for a caller that has read the
    /// clock already and need not build the key.
    pub fn select_at(
        &self,
        key: &str,
        request: &HeaderMap,
        now: Instant,
    ) -> Option<Arc<CachedResponse>> {
        self.servable(key, now)?
            .as_slice()
            .iter()
            .find(|entry| entry.variant.matches(request))
            .cloned()
    }

    /// Number of variants stored under `key`.
    pub fn variant_count(&self, key: &CacheKey) -> usize {
        self.servable(key.as_str(), Instant::now())
            .map_or(0, |v| v.as_slice().len())
    }

    /// Stores `entry`, fetched for `request`, under `key`: it replaces every
    /// variant `request` selected, goes first, and the oldest variants beyond
    /// `max_variants` (and any that can no longer be served) are dropped.
    /// Atomic per key; visible to every later lookup once this returns.
    pub fn insert(&self, key: CacheKey, entry: Arc<CachedResponse>, request: &HeaderMap) {
        let now = Instant::now();
        self.sweep_if_due(now);
        let max_variants = self.max_variants;
        let merged = |existing: Option<&Variants>, entry: Arc<CachedResponse>| -> Variants {
            let kept = existing
                .into_iter()
                .flat_map(|e| e.as_slice())
                .filter(|old| !old.variant.matches(request) && old.keep_until > now);
            Variants::new(entry, kept.take(max_variants - 1).cloned().collect())
        };
        let mut pending = Some(entry);
        let found = self.entries.entry(&key, None, |_, current| {
            if let Some(entry) = pending.take() {
                *current = merged(Some(current), entry);
            }
            EntryAction::Retain(())
        });
        match found {
            EntryResult::Vacant(slot) | EntryResult::Replaced(slot, _) => {
                if let Some(entry) = pending.take() {
                    let _ = slot.insert(merged(None, entry));
                }
            }
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => {}
        }
    }

    /// Removes `entry` from the variants under `key`, if it is still stored
    /// there (a newer one stored since is left alone).
    pub fn remove_variant(&self, key: &CacheKey, entry: &Arc<CachedResponse>) {
        let found = self.entries.entry(key, None, |_, current| {
            if !current.as_slice().iter().any(|e| Arc::ptr_eq(e, entry)) {
                return EntryAction::Retain(());
            }
            let mut rest = current
                .as_slice()
                .iter()
                .filter(|e| !Arc::ptr_eq(e, entry))
                .cloned();
            let Some(first) = rest.next() else {
                return EntryAction::Remove;
            };
            *current = Variants::new(first, rest.collect());
            EntryAction::Retain(())
        });
        // An absent key leaves a placeholder to fill; leaving it empty is the answer.
        drop(found);
    }

    /// Removes every entry whose path and query (on any authority) equals one
    /// of `exact` or starts with one of `prefixes`; returns how many keys were
    /// removed. Walks the whole cache: an admin operation, not a request-path one.
    pub fn purge(&self, exact: &[String], prefixes: &[String]) -> usize {
        let doomed = |key: &CacheKey| {
            let path = key.path_and_query();
            exact.iter().any(|e| e == path) || prefixes.iter().any(|p| path.starts_with(p.as_str()))
        };
        let before = self.entries.len();
        self.entries.retain(|key, _| !doomed(key));
        before.saturating_sub(self.entries.len())
    }

    /// Drops every key none of whose variants can be served any more at
    /// `now`; returns how many. Walks the whole cache, one shard at a time.
    pub fn sweep(&self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, variants| servable(variants, now));
        before.saturating_sub(self.entries.len())
    }

    /// Sweeps once [`SWEEP_INTERVAL`] has passed since the last sweep; one
    /// caller does, the others go on.
    fn sweep_if_due(&self, now: Instant) {
        let due = match self.swept.try_lock() {
            Ok(mut swept) if now.saturating_duration_since(*swept) >= SWEEP_INTERVAL => {
                *swept = now;
                true
            }
            _ => false,
        };
        if due {
            self.sweep(now);
        }
    }

    /// Removes every variant stored under `key`, if any.
    pub fn invalidate(&self, key: &CacheKey) {
        self.entries.remove(key);
    }

    /// Number of keys.
    pub fn entry_count(&self) -> u64 {
        u64::try_from(self.entries.len()).unwrap_or(u64::MAX)
    }

    /// Total weight in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weight()
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
