//! What a cached object really costs in memory, against what the cache's
//! byte budget charges for it (`corral_cache_bytes`, which must be within 10%)
//! and what it stores (body and headers). Counted with a global allocator in this test binary,
//! chunk by chunk as glibc's malloc lays them out, so the figures are
//! deterministic: no RSS sampling, no timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use corral::cache::{CacheKey, CachedResponse, HotCache, Timing, Variant};
use corral::config::FreshnessPolicy;
use corral::http::directives::ResponseDirectives;
use http::StatusCode;
use http::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

/// The system allocator, keeping the bytes live in malloc chunks.
struct Live;

static LIVE: AtomicI64 = AtomicI64::new(0);

/// The chunk glibc's malloc carves for `size` bytes on 64-bit Linux: the
/// request plus an 8-byte header, rounded up to 16, at least 32.
fn chunk(size: usize) -> i64 {
    (((size + 8 + 15) & !15).max(32)) as i64
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new_size) - chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Live = Live;

const OBJECTS: usize = 20_000;
const BODY: usize = 1024;

/// The head the static origin of `scripts/load.sh` sends, as a fill stores it.
fn origin_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("content-length", HeaderValue::from_static("1024"));
    headers.insert(
        "date",
        HeaderValue::from_static("Wed, 02 Dec 2026 03:38:20 GMT"),
    );
    headers.insert("via", HeaderValue::from_static("1.1 corral"));
    // A field http has no constant for: its name is an allocation of its own.
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("7b0e6c1e-3f4a-4d7e-9a51-0c2f5d8e1a93"),
    );
    headers
}

fn stored_bytes(headers: &HeaderMap) -> usize {
    BODY + headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum::<usize>()
}

#[test]
fn a_cached_object_costs_what_the_budget_charges_and_little_more_than_it_stores() {
    let policy = FreshnessPolicy::with_ttl(std::time::Duration::from_secs(3600));
    let cache = HotCache::new(u64::MAX / 2, 4, || {});
    let now = Instant::now();
    let timing = Timing::new(now, now, SystemTime::now());
    let stored = stored_bytes(&origin_headers());
    let before = LIVE.load(Ordering::Relaxed);
    for n in 0..OBJECTS {
        let headers = origin_headers();
        let directives = ResponseDirectives::from_headers(&headers);
        let body = Bytes::from(vec![b'x'; BODY]);
        let entry = CachedResponse::new(
            StatusCode::OK,
            headers,
            directives,
            body,
            Variant::default(),
            timing,
            &policy,
        );
        let key = CacheKey::new("127.0.0.1:27100", &format!("/obj/{n}"));
        cache.insert(key, Arc::new(entry), &HeaderMap::new());
    }
    let live = (LIVE.load(Ordering::Relaxed) - before) as f64 / OBJECTS as f64;
    let charged = cache.weighted_size() as f64 / OBJECTS as f64;
    eprintln!(
        "per object: stored {stored} bytes, live heap {live:.0} bytes ({:.2}x stored), \
         charged {charged:.0} bytes ({:.2} of live)",
        live / stored as f64,
        charged / live
    );
    assert_eq!(cache.entry_count(), OBJECTS as u64);
    assert!(
        (charged - live).abs() <= 0.10 * live,
        "the budget charges {charged:.0} bytes per object, which really costs {live:.0}"
    );
    // Issue 15: at most 1.5 times what it stores.
    assert!(
        live <= 1.5 * stored as f64,
        "an object of {stored} stored bytes costs {live:.0}"
    );
}
