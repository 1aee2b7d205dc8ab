//! The stored entry and the in-process tier.

use super::entry::*;
use super::memory::*;
use super::*;
use crate::config::FreshnessPolicy;
use crate::http::directives::{CORRAL_CACHE_CONTROL, ResponseDirectives};
use crate::http::test_support::headers;
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

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

/// An empty 200 with `headers`, arrived at `now` (and now on the wall clock).
fn arrived_now(headers: HeaderMap, now: Instant, policy: &FreshnessPolicy) -> CachedResponse {
    let timing = Timing::new(now, now, SystemTime::now());
    entry_from(
        StatusCode::OK,
        headers,
        Bytes::new(),
        Variant::default(),
        timing,
        policy,
    )
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
    let detached = StoredHeaders::detached(&headers);
    let stored = detached.get(&HeaderName::from_static("x-slice")).unwrap();
    assert_eq!(stored, value);
    let buffer = read_buffer.as_ptr_range();
    assert!(!buffer.contains(&stored.as_bytes().as_ptr()));
}

/// A name too long to share is kept by its own headers, and reads back like
/// any other: in order, among shared ones, in every view of the lines.
#[test]
fn a_name_kept_apart_reads_back_like_a_shared_one() {
    let long = HeaderName::from_bytes(&[b'x'; 80]).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    headers.append(long.clone(), HeaderValue::from_static("one"));
    headers.append(long.clone(), HeaderValue::from_static("two"));
    headers.insert("x-request-id", HeaderValue::from_static("abc"));
    let stored = StoredHeaders::detached(&headers);
    assert_eq!(stored.len(), 4);
    assert!(stored.contains_key(&long));
    let values: Vec<_> = stored.get_all(&long).collect();
    assert_eq!(values, ["one", "two"]);
    assert_eq!(
        stored.get(&http::header::CONTENT_TYPE).unwrap(),
        "text/plain"
    );
    assert_eq!(stored.to_map(), headers);
    let names: Vec<_> = stored
        .iter()
        .map(|(name, _)| name.as_str().to_owned())
        .collect();
    let expected: Vec<_> = headers
        .iter()
        .map(|(name, _)| name.as_str().to_owned())
        .collect();
    assert_eq!(names, expected);
    assert_eq!(stored, StoredHeaders::detached(&headers));
    // Its own copy of the long name is charged; the shared ones are not.
    let shared_only = {
        let mut short = headers.clone();
        short.remove(&long);
        StoredHeaders::detached(&short)
    };
    assert!(stored.heap_size() > shared_only.heap_size() + 80);
}

fn timing() -> Timing {
    let now = Instant::now();
    Timing::new(now, now, SystemTime::now())
}

fn entry_with(body: &'static [u8], fresh_for: Duration, variant: Variant) -> Arc<CachedResponse> {
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
    assert_eq!(stored.lifetime().duration, Duration::from_secs(60));
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
    let strict = arrived_now(
        headers(&[("cache-control", "max-age=10, must-revalidate")]),
        now,
        &policy,
    );
    assert_eq!(
        strict.keep_until - now,
        Duration::from_secs(10) + EVICTION_GRACE
    );
    assert!(!strict.may_serve_disconnected());
    let relaxed = arrived_now(HeaderMap::new(), now, &policy);
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
        stored.lifetime().duration,
        crate::http::directives::DELTA_SECONDS_MAX
    );
    cache.insert(key("/k"), stored, &HeaderMap::new());
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
    let key = key("/k");
    let one = variants_weight(&key, &Variants::One(Arc::clone(&stored)));
    let two = variants_weight(
        &key,
        &Variants::new(Arc::clone(&stored), vec![Arc::clone(&stored)]),
    );
    // A second variant costs its entry and a list: an `Arc` (48-byte chunk)
    // around two pointers (32).
    assert_eq!(two - one, (stored.weight() + 48 + 32) as u64);
    assert!(stored.weight() > 100, "the body and the entry itself");
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
        cache.select(&key("/k"), &language("en")).unwrap().body(),
        "en-1"
    );
    assert_eq!(
        cache.select(&key("/k"), &language("fr")).unwrap().body(),
        "fr-1"
    );
    assert!(cache.select(&key("/k"), &language("de")).is_none());
    cache.insert(key("/k"), variant_for("en", b"en-2"), &language("en"));
    assert_eq!(cache.variant_count(&key("/k")), 2);
    assert_eq!(
        cache.select(&key("/k"), &language("en")).unwrap().body(),
        "en-2"
    );
    assert_eq!(cache.get(&key("/k")).unwrap().body(), "en-2");
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

#[tokio::test(start_paused = true)]
async fn an_entry_crosses_the_wire_and_is_judged_as_it_was() {
    let policy = FreshnessPolicy {
        stale_if_error: Some(Duration::from_secs(300)),
        ..FreshnessPolicy::with_ttl(Duration::from_secs(60))
    };
    let origin = headers(&[
        ("cache-control", "max-age=30, stale-while-revalidate=10"),
        ("corral-cache-control", "max-age=40"),
        ("etag", "\"v1\""),
        ("vary", "accept-language"),
        ("age", "5"),
    ]);
    let request = headers(&[("accept-language", "fr"), ("x-tenant", "acme")]);
    let variant = Variant::capture(
        ["accept-language"].into_iter(),
        &[http::header::HeaderName::from_static("x-tenant")],
        &request,
    );
    let stored = entry_from(
        StatusCode::OK,
        origin,
        Bytes::from_static(b"bonjour"),
        variant,
        timing(),
        &policy,
    );
    let wire = stored.to_wire(&policy);
    assert_eq!(
        wire.lifetime,
        Duration::from_secs(40),
        "the targeted field governs"
    );
    assert_eq!(
        wire.stale_while_revalidate,
        Duration::ZERO,
        "not the CC's once targeted"
    );
    assert_eq!(wire.stale_if_error, Duration::from_secs(300), "the route's");
    let bytes = super::wire::encode(&wire).unwrap();

    tokio::time::advance(Duration::from_secs(12)).await;
    let decoded = super::wire::decode(&bytes).unwrap();
    let now = Instant::now();
    let wall = stored.received_at() + Duration::from_secs(12);
    let restored = CachedResponse::from_wire(decoded, &policy, now, wall);
    assert_eq!(restored.status, stored.status);
    assert_eq!(restored.body(), stored.body());
    assert_eq!(restored.headers, stored.headers);
    assert_eq!(restored.origin_headers(), stored.origin_headers());
    assert_eq!(restored.lifetime(), stored.lifetime());
    assert_eq!(restored.initial_age(), stored.initial_age());
    assert_eq!(restored.age_secs(now), stored.age_secs(now));
    assert_eq!(restored.ttl_secs(now), stored.ttl_secs(now));
    assert_eq!(restored.has_validator, stored.has_validator);
    assert!(restored.variant.matches(&request));
    assert!(
        !restored
            .variant
            .matches(&headers(&[("accept-language", "fr")]))
    );
    let wishes = NO_REQUEST_DIRECTIVES;
    assert_eq!(
        restored.reuse(now, &wishes, &policy),
        stored.reuse(now, &wishes, &policy)
    );
}

#[tokio::test(start_paused = true)]
async fn the_in_process_tier_answers_through_the_seam() {
    let cache = HotCache::new(1 << 20, 8, || {});
    let tier: &dyn Tier = &cache;
    let plain = HeaderMap::new();
    let policy = FreshnessPolicy::with_ttl(Duration::from_secs(60));
    assert!(tier.lookup(&key("/t"), &plain, &policy).await.is_none());
    let stored = entry(b"t", Duration::from_secs(60));
    assert!(tier.store(&key("/t"), &stored, &plain, &policy).await);
    let found = tier.lookup(&key("/t"), &plain, &policy).await.unwrap();
    assert!(Arc::ptr_eq(&found, &stored));
    assert!(tier.store(&key("/u/1"), &stored, &plain, &policy).await);
    let purged = tier
        .purge(Purge {
            exact: &[],
            prefixes: &["/u/".to_owned()],
        })
        .await;
    assert_eq!(purged, 1);
    tier.invalidate(&key("/t")).await;
    assert!(tier.lookup(&key("/t"), &plain, &policy).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn entries_that_can_no_longer_be_served_are_absent_and_swept() {
    let cache = HotCache::new(1 << 20, 8, || {});
    for path in ["/a", "/b", "/c"] {
        cache.insert(
            key(path),
            entry(b"x", Duration::from_secs(1)),
            &HeaderMap::new(),
        );
    }
    tokio::time::advance(Duration::from_secs(2) + EVICTION_GRACE).await;
    assert_eq!(
        cache.entry_count(),
        3,
        "nothing is dropped behind the scenes"
    );
    assert!(cache.get(&key("/a")).is_none());
    assert_eq!(
        cache.entry_count(),
        2,
        "a lookup drops what it cannot serve"
    );
    assert_eq!(cache.sweep(Instant::now()), 2);
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.weighted_size(), 0);
}
