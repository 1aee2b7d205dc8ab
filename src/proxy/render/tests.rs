//! The `Cache-Status` renderings and what a stored entry becomes for one request.

use super::*;

#[test]
fn corrals_member_comes_last_after_the_upstream_ones_and_once() {
    let mut response = Response::new(ProxyBody::empty());
    let headers = response.headers_mut();
    headers.append("cache-status", HeaderValue::from_static("origin-cdn; hit"));
    headers.append("cache-status", HeaderValue::from_static("edge; fwd=miss"));
    let answer = Answer::new(response, CacheStatus::of(CacheOutcome::Coalesced));
    let lines: Vec<_> = answer
        .response
        .headers()
        .get_all("cache-status")
        .iter()
        .collect();
    assert_eq!(
        lines,
        ["origin-cdn; hit, edge; fwd=miss, corral; fwd=miss; collapsed"]
    );
    let plain = Answer::new(
        Response::new(ProxyBody::empty()),
        CacheStatus::of(CacheOutcome::Hit),
    );
    assert_eq!(plain.response.headers()["cache-status"], "corral; hit");
}

/// The header of an answer fetched from the origin, which answered `fwd`.
fn fetched(outcome: CacheOutcome, fwd: Option<StatusCode>, stored: bool) -> HeaderValue {
    CacheStatus {
        fwd_status: fwd,
        stored,
        ..CacheStatus::of(outcome)
    }
    .header()
}

#[test]
fn cache_status_distinguishes_leader_follower_and_hit() {
    let miss = fetched(CacheOutcome::Miss, Some(StatusCode::OK), true);
    assert_eq!(miss, "corral; fwd=miss; fwd-status=200; stored");
    let follower = fetched(CacheOutcome::Coalesced, Some(StatusCode::OK), false);
    assert_eq!(follower, "corral; fwd=miss; collapsed; fwd-status=200");
    let hit = cache_status_value(CacheOutcome::Hit, None, false, Some(42), None);
    assert_eq!(hit, "corral; hit; ttl=42");
    let pass = CacheStatus::of(CacheOutcome::Pass(PassReason::Method)).header();
    assert_eq!(pass, "corral; fwd=bypass; detail=method");
    let stale = CacheStatus::of(CacheOutcome::Stale(StaleReason::CircuitOpen)).header();
    assert_eq!(stale, "corral; hit; detail=stale-circuit-open");
}

#[test]
fn cache_status_names_revalidations_and_stale_reasons() {
    let revalidated = fetched(
        CacheOutcome::Revalidated { collapsed: false },
        Some(StatusCode::NOT_MODIFIED),
        true,
    );
    assert_eq!(revalidated, "corral; fwd=stale; fwd-status=304; stored");
    let follower = fetched(
        CacheOutcome::Revalidated { collapsed: true },
        Some(StatusCode::OK),
        false,
    );
    assert_eq!(follower, "corral; fwd=stale; collapsed; fwd-status=200");
    for (reason, text) in [
        (
            StaleReason::WhileRevalidate,
            "corral; hit; detail=stale-while-revalidate",
        ),
        (StaleReason::IfError, "corral; hit; detail=stale-if-error"),
    ] {
        let value = CacheStatus::of(CacheOutcome::Stale(reason)).header();
        assert_eq!(value, text);
        assert_eq!(CacheOutcome::Stale(reason).label(), "stale");
    }
    assert_eq!(
        CacheOutcome::Revalidated { collapsed: false }.label(),
        "miss"
    );
    assert_eq!(
        CacheOutcome::Revalidated { collapsed: true }.label(),
        "coalesced"
    );
}

/// A stored 200 of `body`, validated by `ETag: "v1"`, fresh for a minute.
fn stored(status: StatusCode, body: &'static [u8]) -> CachedResponse {
    stored_typed(status, body, "text/plain")
}

/// [`stored`] with its `Content-Type`.
fn stored_typed(
    status: StatusCode,
    body: &'static [u8],
    content_type: &'static str,
) -> CachedResponse {
    use crate::cache::{Timing, Variant};
    use crate::config::FreshnessPolicy;
    use crate::http::directives::ResponseDirectives;
    let mut headers = http::HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    let now = Instant::now();
    CachedResponse::new(
        status,
        headers.clone(),
        ResponseDirectives::from_headers(&headers),
        bytes::Bytes::from_static(body),
        Variant::default(),
        Timing::new(now, now, std::time::SystemTime::now()),
        &FreshnessPolicy::with_ttl(std::time::Duration::from_secs(60)),
    )
}

/// A request for `method` with `headers`, taken apart.
fn request(method: Method, headers: &[(&'static str, &'static str)]) -> Parts {
    let mut request = http::Request::builder().method(method).uri("/object");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap().into_parts().0
}

/// `entry` rendered as a hit for `method` with request `headers`.
fn render(
    entry: &CachedResponse,
    method: Method,
    headers: &[(&'static str, &'static str)],
) -> Answer {
    from_entry(
        entry,
        CacheStatus::of(CacheOutcome::Hit),
        &request(method, headers),
        Instant::now(),
    )
}

fn body_of(answer: &Answer) -> &[u8] {
    match answer.response.body() {
        ProxyBody::Full(Some(bytes)) => bytes,
        ProxyBody::Full(None) => b"",
        ProxyBody::Stream(_) => panic!("a stored answer is never streamed"),
    }
}

fn header_of<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
}

const BODY: &[u8] = b"0123456789abcdefghij";

#[test]
fn one_range_is_a_206_sharing_the_stored_bytes() {
    let entry = stored(StatusCode::OK, BODY);
    let answer = render(&entry, Method::GET, &[("range", "bytes=10-14")]);
    assert_eq!(answer.response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body_of(&answer), b"abcde");
    assert_eq!(header_of(&answer, "content-range"), Some("bytes 10-14/20"));
    assert_eq!(header_of(&answer, "content-length"), Some("5"));
    assert_eq!(header_of(&answer, "accept-ranges"), Some("bytes"));
    assert_eq!(header_of(&answer, "etag"), Some("\"v1\""));
    assert_eq!(header_of(&answer, "cache-control"), Some("max-age=60"));
    assert!(header_of(&answer, "age").is_some());
    assert_eq!(header_of(&answer, "cache-status"), Some("corral; hit"));
    // Zero copy: the slice points into the stored body.
    let ProxyBody::Full(Some(slice)) = answer.response.body() else {
        panic!("no body");
    };
    assert_eq!(slice.as_ptr(), entry.body()[10..].as_ptr());
    for (range, text, content_range) in [
        ("bytes=15-", &b"fghij"[..], "bytes 15-19/20"),
        ("bytes=-3", b"hij", "bytes 17-19/20"),
        ("bytes=0-", BODY, "bytes 0-19/20"),
        ("bytes=18-500", b"ij", "bytes 18-19/20"),
    ] {
        let answer = render(&entry, Method::GET, &[("range", range)]);
        assert_eq!(answer.response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(body_of(&answer), text, "{range}");
        assert_eq!(header_of(&answer, "content-range"), Some(content_range));
    }
}

#[test]
fn full_answers_from_a_stored_200_say_accept_ranges() {
    let entry = stored(StatusCode::OK, BODY);
    let answer = render(&entry, Method::GET, &[]);
    assert_eq!(answer.response.status(), StatusCode::OK);
    assert_eq!(body_of(&answer), BODY);
    assert_eq!(header_of(&answer, "accept-ranges"), Some("bytes"));
    assert_eq!(header_of(&answer, "content-range"), None);
}

#[test]
fn unsatisfiable_ranges_are_a_416_naming_the_length() {
    let entry = stored(StatusCode::OK, BODY);
    // GET only: a HEAD ignores Range (see `head_ignores_range`).
    let answer = render(&entry, Method::GET, &[("range", "bytes=20-")]);
    assert_eq!(answer.response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_of(&answer, "content-range"), Some("bytes */20"));
    assert_eq!(header_of(&answer, "content-length"), Some("0"));
    assert_eq!(header_of(&answer, "content-type"), None);
    assert_eq!(header_of(&answer, "cache-control"), None);
    assert!(header_of(&answer, "date").is_some());
    assert_eq!(header_of(&answer, "cache-status"), Some("corral; hit"));
    assert_eq!(body_of(&answer), b"");
}

#[test]
fn several_ranges_and_ignored_ranges_get_the_whole_200() {
    let entry = stored(StatusCode::OK, BODY);
    for headers in [
        &[("range", "bytes=0-1,5-6")][..],
        &[("range", "items=0-1")],
        &[("range", "bytes=5-1")],
        &[("range", "bytes=0-1"), ("if-range", "\"v0\"")],
        &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")],
    ] {
        let answer = render(&entry, Method::GET, headers);
        assert_eq!(answer.response.status(), StatusCode::OK, "{headers:?}");
        assert_eq!(body_of(&answer), BODY);
        assert_eq!(header_of(&answer, "content-length"), Some("20"));
        assert_eq!(header_of(&answer, "accept-ranges"), Some("bytes"));
    }
    let matching = render(
        &entry,
        Method::GET,
        &[("range", "bytes=0-1"), ("if-range", "\"v1\"")],
    );
    assert_eq!(matching.response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body_of(&matching), b"01");
}

#[test]
fn head_ignores_range() {
    // RFC 9110 §14.2: range handling is defined for GET alone.
    let entry = stored(StatusCode::OK, BODY);
    for range in ["bytes=0-3", "bytes=99-"] {
        let answer = render(&entry, Method::HEAD, &[("range", range)]);
        assert_eq!(answer.response.status(), StatusCode::OK, "{range}");
        assert_eq!(header_of(&answer, "content-range"), None);
        assert_eq!(body_of(&answer), b"");
    }
}

#[test]
fn preconditions_come_before_the_range() {
    let entry = stored(StatusCode::OK, BODY);
    let answer = render(
        &entry,
        Method::GET,
        &[("range", "bytes=0-3"), ("if-none-match", "\"v1\"")],
    );
    assert_eq!(answer.response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header_of(&answer, "content-range"), None);
    assert_eq!(body_of(&answer), b"");
    let unsatisfiable = render(
        &entry,
        Method::GET,
        &[("range", "bytes=99-"), ("if-none-match", "\"v1\"")],
    );
    assert_eq!(unsatisfiable.response.status(), StatusCode::NOT_MODIFIED);
}

#[test]
fn only_stored_200s_answer_ranges() {
    let entry = stored(StatusCode::NOT_FOUND, BODY);
    let answer = render(&entry, Method::GET, &[("range", "bytes=0-3")]);
    assert_eq!(answer.response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_of(&answer), BODY);
    assert_eq!(header_of(&answer, "accept-ranges"), None);
    let entry = stored(StatusCode::OK, BODY);
    let answer = render(&entry, Method::POST, &[("range", "bytes=0-3")]);
    assert_eq!(answer.response.status(), StatusCode::OK);
    assert_eq!(body_of(&answer), BODY);
}

/// The head a plain hit copies from its thread's slot is the one rendering
/// the entry afresh gives, for that entry and that second only.
#[tokio::test(start_paused = true)]
async fn a_plain_hit_head_is_the_entrys_own_and_of_this_second() {
    let entry = Arc::new(stored(StatusCode::OK, BODY));
    let get = request(Method::GET, &[]);
    let first = hit_now(&entry, &get);
    assert_eq!(header_of(&first, "age"), Some("0"));
    assert_eq!(
        header_of(&first, "cache-status"),
        Some("corral; hit; ttl=60")
    );
    assert_eq!(body_of(&first), BODY);
    // The same lines as the path that builds them one by one, Cache-Status
    // aside (that path is given no ttl here).
    let built = render(&entry, Method::GET, &[]);
    let without_status = |answer: &Answer| {
        let mut headers = answer.response.headers().clone();
        headers.remove("cache-status");
        headers
    };
    assert_eq!(without_status(&first), without_status(&built));
    let again = hit_now(&entry, &get);
    assert_eq!(again.response.headers(), first.response.headers());

    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    let later = hit_now(&entry, &get);
    assert_eq!(header_of(&later, "age"), Some("2"));
    assert_eq!(
        header_of(&later, "cache-status"),
        Some("corral; hit; ttl=58")
    );

    // HEAD shares the head, not the body.
    let head = hit_now(&entry, &request(Method::HEAD, &[]));
    assert_eq!(head.response.headers(), later.response.headers());
    assert_eq!(body_of(&head), b"");

    // Another entry, hit in the same second, gets its own lines: never the
    // head kept for the first, whichever slot it falls in.
    let other = Arc::new(stored_typed(StatusCode::OK, BODY, "application/json"));
    let answer = hit_now(&other, &get);
    assert_eq!(header_of(&answer, "content-type"), Some("application/json"));
    assert_eq!(
        header_of(&hit_now(&entry, &get), "content-type"),
        Some("text/plain")
    );
}

/// A conditional or ranged hit never takes the plain head: it is answered
/// from the stored validators and body.
#[tokio::test(start_paused = true)]
async fn conditional_and_ranged_hits_are_rendered_from_the_entry() {
    let entry = Arc::new(stored(StatusCode::OK, BODY));
    let plain = hit_now(&entry, &request(Method::GET, &[]));
    assert_eq!(plain.response.status(), StatusCode::OK);
    let matched = hit_now(
        &entry,
        &request(Method::GET, &[("if-none-match", "\"v1\"")]),
    );
    assert_eq!(matched.response.status(), StatusCode::NOT_MODIFIED);
    let ranged = hit_now(&entry, &request(Method::GET, &[("range", "bytes=0-3")]));
    assert_eq!(ranged.response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body_of(&ranged), b"0123");
}

/// [`hit`] as of now: the entry's age read the way a lookup reads it.
fn hit_now(entry: &Arc<CachedResponse>, parts: &Parts) -> Answer {
    hit(entry, parts, entry.current_age(Instant::now()))
}
