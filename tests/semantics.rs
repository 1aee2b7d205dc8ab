//! HTTP caching semantics through real sockets (RFC 9111, RFC 5861, RFC 9213):
//! freshness and its precedence, revalidation, stale serving, `Vary`,
//! invalidation, conditional and `only-if-cached` requests, negative caching,
//! hit-for-pass under a burst, and streaming of objects too large to store.
//!
//! Where time must pass, tests run on a paused tokio clock (current-thread
//! runtime) and move it with `advance`; corral decides freshness on that
//! clock. Nothing sleeps to synchronise: bursts are held on `Gate`s and
//! progress is read from counters.
mod support;

use support::{Seen, Setup, get, get_with, join_all, send, spawn_get};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use corral::cache::CacheKey;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;

/// Bound on every wait-for-condition; generous for a shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// Bound on one client request, so a proxy that never answers fails the test
/// instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Origin settings for paused-clock tests: no retries, no breaker, and time
/// limits far beyond any `advance`, so moving the clock never fires them.
const PAUSED_ORIGIN: &str = "timeout = \"1h\"\nfirst_byte_timeout = \"1h\"\n\
    request_timeout = \"1h\"\nretries = 0\nbreaker_min_requests = 100000\n";

/// Client-side timers likewise out of the way of `advance`.
const PAUSED_SERVER: &str = "[server]\nidle_timeout = \"1h\"\nheader_read_timeout = \"1h\"\n";

/// Corral in front of `origin` for a paused-clock test: [`PAUSED_ORIGIN`] and
/// [`PAUSED_SERVER`], to which the test adds its routes.
fn paused(origin: &MockOrigin) -> Setup {
    Setup::origin(origin)
        .origin_keys(PAUSED_ORIGIN)
        .toml(PAUSED_SERVER)
}

fn is_hit(seen: &Seen) -> bool {
    seen.cache_status.starts_with("corral; hit") && !seen.cache_status.contains("detail=")
}

fn is_leader_miss(seen: &Seen) -> bool {
    seen.cache_status.contains("fwd=miss") && !seen.cache_status.contains("collapsed")
}

/// The primary cache key corral uses for `path` on this proxy.
fn key(corral: &support::TestProxy, path: &str) -> CacheKey {
    corral.proxy.origin_key(path)
}

/// The values of `name` each request to a scripted path carried, in order.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<Option<String>>>>);

impl Recorded {
    fn push(&self, headers: &http::HeaderMap, name: &str) {
        let value = headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<binary>").to_owned());
        self.0.lock().unwrap().push(value);
    }

    fn all(&self) -> Vec<Option<String>> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn stale_entry_is_revalidated_and_a_304_renews_it() {
    let origin = MockOrigin::start().await.unwrap();
    let sent = Recorded::default();
    {
        let sent = sent.clone();
        origin.on("/rev", move |seen| {
            sent.push(&seen.headers, "if-none-match");
            let matches = seen
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"");
            if seen.nth == 1 {
                Reply::ok("body-v1")
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=60")
                    .header("x-version", "1")
                    .into()
            } else if matches {
                Reply::ok("")
                    .status(StatusCode::NOT_MODIFIED)
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=120")
                    .header("x-version", "2")
                    .into()
            } else {
                Reply::ok("unconditional").into()
            }
        });
    }
    let corral = paused(&origin)
        .toml("[[route]]\nmatch = \"/\"\nttl = \"10s\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/rev");

    let first = get(&client, &url).await;
    assert_eq!((first.status, first.text()), (StatusCode::OK, "body-v1"));
    assert!(is_leader_miss(&first), "{first:?}");

    tokio::time::advance(Duration::from_secs(61)).await;
    let revalidated = get(&client, &url).await;
    assert_eq!(revalidated.status, StatusCode::OK, "{revalidated:?}");
    assert_eq!(
        revalidated.text(),
        "body-v1",
        "the stored body, confirmed by the 304"
    );
    assert_eq!(
        revalidated.cache_status, "corral; fwd=stale; fwd-status=304; stored",
        "{revalidated:?}"
    );
    assert_eq!(
        revalidated.header("x-version"),
        Some("2"),
        "headers updated by the 304"
    );
    assert_eq!(
        sent.all(),
        [None, Some("\"v1\"".to_owned())],
        "the revalidation carried the stored ETag"
    );

    // Freshness renewed from the 304: 120 s, not the original 60 s.
    let hit = get(&client, &url).await;
    assert!(is_hit(&hit), "{hit:?}");
    assert!((118..=120).contains(&hit.ttl()), "{hit:?}");
    tokio::time::advance(Duration::from_secs(100)).await;
    let later = get(&client, &url).await;
    assert!(is_hit(&later), "still fresh 100 s after the 304: {later:?}");
    assert_eq!(
        (later.text(), later.header("x-version")),
        ("body-v1", Some("2"))
    );
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    const BURST: usize = 50;
    let origin = MockOrigin::start().await.unwrap();
    let refresh = Gate::new();
    {
        let refresh = refresh.clone();
        origin.on("/swr", move |seen| {
            let reply = Reply::ok(format!("v{}", seen.nth))
                .header("cache-control", "max-age=60, stale-while-revalidate=30");
            if seen.nth == 1 {
                reply.into()
            } else {
                Behaviour::gated(&refresh, reply)
            }
        });
    }
    let corral = paused(&origin)
        .toml("[[route]]\nname = \"swr\"\nmatch = \"/\"\nttl = \"10s\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/swr");
    assert_eq!(get(&client, &url).await.text(), "v1");

    tokio::time::advance(Duration::from_secs(61)).await;
    let burst: Vec<_> = (0..BURST).map(|_| spawn_get(&client, &url)).collect();
    // Every client is answered while the refresh is still held at the origin.
    for seen in join_all(burst).await {
        assert_eq!(
            (seen.status, seen.text()),
            (StatusCode::OK, "v1"),
            "{seen:?}"
        );
        assert_eq!(
            seen.cache_status, "corral; hit; detail=stale-while-revalidate",
            "{seen:?}"
        );
        assert!(seen.age() >= 61, "{seen:?}");
    }
    tokio::time::timeout(WITHIN, origin.wait_for_hits(2))
        .await
        .expect("the background refresh reaches the origin");
    assert_eq!(
        origin.hits(),
        2,
        "exactly one background refresh for {BURST} stale answers"
    );
    assert_eq!(corral.proxy.flights_in_flight(), 1);
    let route = corral.proxy.metrics().route("swr");
    assert_eq!(route.answered("stale"), BURST as u64);

    refresh.open();
    support::wait_until("the refresh is stored", WITHIN, || {
        corral.proxy.flights_in_flight() == 0
    })
    .await;
    let refreshed = get(&client, &url).await;
    assert!(is_hit(&refreshed), "{refreshed:?}");
    assert_eq!(refreshed.text(), "v2");
    assert_eq!(origin.hits(), 2);

    // Past the window, a stale entry is not served: the client waits for the origin.
    tokio::time::advance(Duration::from_secs(60 + 30)).await;
    let waited = get(&client, &url).await;
    assert_eq!(waited.text(), "v3");
    assert!(is_leader_miss(&waited), "{waited:?}");
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stored_answer_while_the_origin_fails() {
    let origin = MockOrigin::start().await.unwrap();
    let down = Arc::new(AtomicBool::new(false));
    for (path, cache_control) in [
        ("/sie/origin", "max-age=60, stale-if-error=300"),
        ("/sie/route", "max-age=60"),
        ("/sie/strict", "max-age=60, must-revalidate"),
    ] {
        let down = Arc::clone(&down);
        origin.on(path, move |seen| {
            if !down.load(Ordering::SeqCst) {
                Reply::ok(format!("good {}", seen.path))
                    .header("cache-control", cache_control)
                    .into()
            } else if seen.nth % 2 == 0 {
                Behaviour::Reset
            } else {
                Reply::ok("down")
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .into()
            }
        });
    }
    origin.on("/sie/slow", {
        let down = Arc::clone(&down);
        move |seen| {
            if down.load(Ordering::SeqCst) {
                Behaviour::Hang
            } else {
                Reply::ok(format!("good {}", seen.path))
                    .header("cache-control", "max-age=60, stale-if-error=300")
                    .into()
            }
        }
    });
    let corral = paused(&origin)
        .toml(
            "[[route]]\nmatch = \"/sie/route\"\nstale_if_error = \"300s\"\n\
             [[route]]\nmatch = \"/sie/slow\"\nfirst_byte_timeout = \"2s\"\nstale_deadline = \"0s\"\n\
             [[route]]\nmatch = \"/\"\nstale_if_disconnected = \"0s\"\n",
        )
        .start()
        .await;
    // stale_if_disconnected is off where this test shows stale-if-error's
    // own window ending (tests/caching_round_two.rs covers the default).
    let client = support::client();
    for path in ["/sie/origin", "/sie/route", "/sie/strict", "/sie/slow"] {
        assert_eq!(get(&client, &corral.url(path)).await.status, StatusCode::OK);
    }

    tokio::time::advance(Duration::from_secs(61)).await;
    down.store(true, Ordering::SeqCst);
    // A reset (502) and a 503, each hidden by the stored answer.
    for path in ["/sie/origin", "/sie/route"] {
        for attempt in 0..2 {
            let seen = get(&client, &corral.url(path)).await;
            assert_eq!(seen.status, StatusCode::OK, "{path} #{attempt}: {seen:?}");
            assert_eq!(seen.text(), format!("good {path}"));
            assert_eq!(
                seen.cache_status, "corral; hit; detail=stale-if-error",
                "{path} #{attempt}"
            );
        }
    }
    assert_eq!(
        origin.hits(),
        4 + 4,
        "each stale answer followed a real attempt"
    );
    // An origin that does not answer within the route's first_byte_timeout
    // (the paused clock moves on while everything waits on it); the route
    // turns stale_deadline off, so the client waits for the timeout itself.
    let slow = get(&client, &corral.url("/sie/slow")).await;
    assert_eq!(
        (slow.status, slow.text()),
        (StatusCode::OK, "good /sie/slow")
    );
    assert_eq!(slow.cache_status, "corral; hit; detail=stale-if-error");
    assert_eq!(origin.hits(), 9);
    // must-revalidate forbids it.
    let strict = get(&client, &corral.url("/sie/strict")).await;
    assert!(strict.status.is_server_error(), "{strict:?}");

    // Beyond the window the failure shows.
    tokio::time::advance(Duration::from_secs(300)).await;
    let late = get(&client, &corral.url("/sie/origin")).await;
    assert!(late.status.is_server_error(), "{late:?}");
    assert!(!late.cache_status.contains("stale"), "{late:?}");
    let metrics = corral.proxy.metrics().route("/");
    assert_eq!(metrics.answered("stale"), 2);
    assert_eq!(
        corral.proxy.metrics().route("/sie/slow").answered("stale"),
        1
    );
    corral.shutdown().await;
}

fn by_language(origin: &MockOrigin, path: &str) {
    origin.on(path, |seen| {
        let language = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap_or("?"));
        Reply::ok(format!("hello-{language}"))
            .header("vary", "Accept-Language")
            .header("cache-control", "max-age=60")
            .into()
    });
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = MockOrigin::start().await.unwrap();
    by_language(&origin, "/greeting");
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/greeting");

    for language in ["en", "fr"] {
        let seen = get_with(&client, &url, &[("accept-language", language)]).await;
        assert_eq!(seen.text(), format!("hello-{language}"));
        assert!(is_leader_miss(&seen), "{seen:?}");
    }
    for _ in 0..2 {
        for language in ["en", "fr"] {
            let seen = get_with(&client, &url, &[("accept-language", language)]).await;
            assert_eq!(seen.text(), format!("hello-{language}"), "{seen:?}");
            assert!(is_hit(&seen), "{seen:?}");
        }
    }
    // Whitespace differences select the same variant; no header is its own variant.
    let spaced = get_with(&client, &url, &[("accept-language", "  fr ")]).await;
    assert_eq!(spaced.text(), "hello-fr");
    assert!(is_hit(&spaced), "{spaced:?}");
    let none = get(&client, &url).await;
    assert_eq!(none.text(), "hello-none");
    assert!(is_leader_miss(&none), "{none:?}");
    assert_eq!(origin.hits(), 3);
    assert_eq!(
        corral
            .proxy
            .cache()
            .variant_count(&key(&corral, "/greeting")),
        3
    );
    corral.shutdown().await;
}

#[tokio::test]
async fn vary_star_is_never_served_from_cache() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/star", |seen| {
        Reply::ok(format!("star-{}", seen.nth))
            .header("vary", "*")
            .header("cache-control", "max-age=60")
            .into()
    });
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    for nth in 1..=3 {
        let seen = get(&client, &corral.url("/star")).await;
        assert_eq!(seen.text(), format!("star-{nth}"), "{seen:?}");
        assert!(!is_hit(&seen), "{seen:?}");
    }
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

#[tokio::test]
async fn variants_per_url_are_capped_dropping_the_oldest() {
    const LANGUAGES: [&str; 6] = ["en", "fr", "de", "it", "es", "nl"];
    let origin = MockOrigin::start().await.unwrap();
    by_language(&origin, "/capped");
    let config = "[cache]\nmax_variants = 2\n[[route]]\nmatch = \"/\"\n";
    let corral = Setup::origin(&origin).toml(config).start().await;
    let client = support::client();
    let url = corral.url("/capped");
    let key = key(&corral, "/capped");

    for (stored, language) in LANGUAGES.iter().enumerate() {
        let seen = get_with(&client, &url, &[("accept-language", language)]).await;
        assert!(is_leader_miss(&seen), "{seen:?}");
        let count = corral.proxy.cache().variant_count(&key);
        assert_eq!(count, (stored + 1).min(2), "after {language}");
    }
    assert_eq!(origin.hits(), LANGUAGES.len() as u64);
    // The two most recent are kept; the oldest were dropped.
    for language in ["es", "nl"] {
        let seen = get_with(&client, &url, &[("accept-language", language)]).await;
        assert!(is_hit(&seen), "{language}: {seen:?}");
    }
    let dropped = get_with(&client, &url, &[("accept-language", "en")]).await;
    assert!(is_leader_miss(&dropped), "{dropped:?}");
    assert_eq!(dropped.text(), "hello-en");
    assert_eq!(corral.proxy.cache().variant_count(&key), 2);
    corral.shutdown().await;
}

#[tokio::test]
async fn successful_unsafe_requests_invalidate_the_url_and_its_location() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/items", |seen| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/items") => Reply::ok("created")
                .status(StatusCode::CREATED)
                .header("location", "/items/1")
                .into(),
            ("POST", _) => Reply::ok("failed")
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .into(),
            ("DELETE", _) => Reply::ok("").status(StatusCode::NO_CONTENT).into(),
            _ => Reply::ok(format!("{} #{}", seen.path, seen.nth))
                .header("cache-control", "max-age=600")
                .into(),
        }
    });
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let paths = ["/items", "/items/1", "/items/2"];
    for path in paths {
        assert!(is_leader_miss(&get(&client, &corral.url(path)).await));
        assert!(is_hit(&get(&client, &corral.url(path)).await));
    }
    assert_eq!(origin.hits(), 3);

    let created = send(client.post(corral.url("/items")).body("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    for path in ["/items", "/items/1"] {
        let seen = get(&client, &corral.url(path)).await;
        assert!(is_leader_miss(&seen), "{path} was invalidated: {seen:?}");
    }
    assert!(is_hit(&get(&client, &corral.url("/items/2")).await));
    assert_eq!(origin.hits(), 3 + 1 + 2);

    // A failed unsafe request invalidates nothing; a successful DELETE does.
    let failed = send(client.post(corral.url("/items/2")).body("{}")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(is_hit(&get(&client, &corral.url("/items/2")).await));
    let deleted = send(client.delete(corral.url("/items/2"))).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let seen = get(&client, &corral.url("/items/2")).await;
    assert!(is_leader_miss(&seen), "{seen:?}");
    assert_eq!(origin.hits(), 6 + 3);
    corral.shutdown().await;
}

#[tokio::test]
async fn client_conditionals_are_answered_304_from_the_cache() {
    let origin = MockOrigin::start().await.unwrap();
    let sent = Recorded::default();
    {
        let sent = sent.clone();
        origin.on("/etag", move |seen| {
            sent.push(&seen.headers, "if-none-match");
            Reply::ok("tagged")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60")
                .into()
        });
    }
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();

    // Even a miss answers the client's conditional, after a fill that did not carry it.
    let cold = get_with(
        &client,
        &corral.url("/etag/cold"),
        &[("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(cold.status, StatusCode::NOT_MODIFIED, "{cold:?}");
    assert!(is_leader_miss(&cold), "{cold:?}");
    assert_eq!(sent.all(), [None], "the fill asked for the whole response");

    let url = corral.url("/etag/warm");
    assert_eq!(get(&client, &url).await.text(), "tagged");
    for tags in ["\"v1\"", "W/\"v1\"", "\"v0\", \"v1\"", "*"] {
        let seen = get_with(&client, &url, &[("if-none-match", tags)]).await;
        assert_eq!(seen.status, StatusCode::NOT_MODIFIED, "{tags}: {seen:?}");
        assert!(is_hit(&seen), "{seen:?}");
        assert_eq!(seen.text(), "");
        assert_eq!(seen.header("etag"), Some("\"v1\""));
        assert_eq!(seen.header("cache-control"), Some("max-age=60"));
        assert!(seen.header("content-length").is_none_or(|len| len == "0"));
    }
    let other = get_with(&client, &url, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((other.status, other.text()), (StatusCode::OK, "tagged"));
    assert!(is_hit(&other), "{other:?}");
    // If-Modified-Since at or after the stored Date matches too.
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let since = get_with(&client, &url, &[("if-modified-since", &later)]).await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED, "{since:?}");
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

#[tokio::test]
async fn only_if_cached_gets_504_when_nothing_usable_is_stored() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/oic",
        Reply::ok("stored").header("cache-control", "max-age=60"),
    );
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/oic");
    let only = [("cache-control", "only-if-cached")];

    let cold = get_with(&client, &url, &only).await;
    assert_eq!(cold.status, StatusCode::GATEWAY_TIMEOUT, "{cold:?}");
    assert!(
        cold.cache_status.contains("detail=only-if-cached"),
        "{cold:?}"
    );
    assert_eq!(origin.hits(), 0, "only-if-cached never reaches the origin");

    assert_eq!(get(&client, &url).await.text(), "stored");
    let warm = get_with(&client, &url, &only).await;
    assert_eq!((warm.status, warm.text()), (StatusCode::OK, "stored"));
    assert!(is_hit(&warm), "{warm:?}");
    // Stored, but fresher than the client accepts: still 504, still no origin.
    let picky = get_with(
        &client,
        &url,
        &[("cache-control", "only-if-cached, min-fresh=3600")],
    )
    .await;
    assert_eq!(picky.status, StatusCode::GATEWAY_TIMEOUT, "{picky:?}");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn max_age_zero_and_pragma_no_cache_requests_revalidate() {
    let origin = MockOrigin::start().await.unwrap();
    let sent = Recorded::default();
    {
        let sent = sent.clone();
        origin.on("/check", move |seen| {
            sent.push(&seen.headers, "if-none-match");
            if seen.headers.contains_key("if-none-match") {
                Reply::ok("")
                    .status(StatusCode::NOT_MODIFIED)
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=60")
                    .into()
            } else {
                Reply::ok("checked")
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=60")
                    .into()
            }
        });
    }
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/check");
    assert!(is_leader_miss(&get(&client, &url).await));
    assert!(is_hit(&get(&client, &url).await));

    let reload = get_with(&client, &url, &[("cache-control", "max-age=0")]).await;
    assert_eq!((reload.status, reload.text()), (StatusCode::OK, "checked"));
    assert_eq!(
        reload.cache_status, "corral; fwd=stale; fwd-status=304; stored",
        "{reload:?}"
    );
    // An HTTP/1.0-style Pragma: no-cache (without Cache-Control) is no-cache.
    let pragma = get_with(&client, &url, &[("pragma", "no-cache")]).await;
    assert_eq!(pragma.text(), "checked");
    assert!(pragma.cache_status.contains("fwd=stale"), "{pragma:?}");
    assert_eq!(
        sent.all(),
        [None, Some("\"v1\"".to_owned()), Some("\"v1\"".to_owned())]
    );
    assert!(is_hit(&get(&client, &url).await));
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

#[tokio::test]
async fn not_found_is_cached_only_with_a_negative_ttl() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/", |seen| {
        Reply::ok(format!("missing #{}", seen.nth))
            .status(StatusCode::NOT_FOUND)
            .into()
    });
    let routes = "[[route]]\nmatch = \"/negative/\"\nnegative_ttl = \"30s\"\n\
                  [[route]]\nmatch = \"/\"\n";
    let corral = Setup::origin(&origin).toml(routes).start().await;
    let client = support::client();

    for nth in 1..=2 {
        let seen = get(&client, &corral.url("/plain/gone")).await;
        assert_eq!(seen.status, StatusCode::NOT_FOUND);
        assert_eq!(
            seen.text(),
            format!("missing #{nth}"),
            "never stored: {seen:?}"
        );
        assert!(!seen.cache_status.contains("stored"), "{seen:?}");
    }
    let first = get(&client, &corral.url("/negative/gone")).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert!(first.cache_status.contains("stored"), "{first:?}");
    let again = get(&client, &corral.url("/negative/gone")).await;
    assert_eq!(
        (again.status, &again.text()),
        (StatusCode::NOT_FOUND, &first.text())
    );
    assert!(is_hit(&again), "{again:?}");
    assert!(again.ttl() <= 30, "{again:?}");
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn route_ttl_overrides_the_origin_only_with_override_origin() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/", |seen| {
        Reply::ok(format!("{} #{}", seen.path, seen.nth))
            .header("cache-control", "max-age=600")
            .into()
    });
    let corral = paused(&origin)
        .toml(
            "[[route]]\nmatch = \"/override/\"\nttl = \"5s\"\noverride_origin = true\n\
             [[route]]\nmatch = \"/\"\nttl = \"5s\"\n",
        )
        .start()
        .await;
    let client = support::client();
    for path in ["/override/a", "/default/a"] {
        assert!(is_leader_miss(&get(&client, &corral.url(path)).await));
    }
    let overridden = get(&client, &corral.url("/override/a")).await;
    assert!(overridden.ttl() <= 5, "{overridden:?}");
    let default = get(&client, &corral.url("/default/a")).await;
    assert!(
        default.ttl() > 500,
        "the origin's max-age wins: {default:?}"
    );

    tokio::time::advance(Duration::from_secs(6)).await;
    let refetched = get(&client, &corral.url("/override/a")).await;
    assert!(is_leader_miss(&refetched), "{refetched:?}");
    assert_eq!(refetched.text(), "/override/a #3");
    let kept = get(&client, &corral.url("/default/a")).await;
    assert!(is_hit(&kept), "{kept:?}");
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn route_ttl_is_the_default_and_upstream_age_counts() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/silent", |seen| {
        Reply::ok(format!("silent #{}", seen.nth)).into()
    });
    origin.on("/aged", |seen| {
        Reply::ok(format!("aged #{}", seen.nth))
            .header("cache-control", "max-age=60")
            .header("age", "50")
            .into()
    });
    let corral = paused(&origin)
        .toml("[[route]]\nmatch = \"/\"\nttl = \"20s\"\n")
        .start()
        .await;
    let client = support::client();
    for path in ["/silent", "/aged"] {
        assert!(is_leader_miss(&get(&client, &corral.url(path)).await));
    }
    let silent = get(&client, &corral.url("/silent")).await;
    assert!(
        (19..=20).contains(&silent.ttl()),
        "route ttl as default: {silent:?}"
    );
    let aged = get(&client, &corral.url("/aged")).await;
    assert!(aged.age() >= 50, "{aged:?}");
    assert!(aged.ttl() <= 10, "{aged:?}");

    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(is_leader_miss(&get(&client, &corral.url("/aged")).await));
    assert!(is_hit(&get(&client, &corral.url("/silent")).await));
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

#[tokio::test]
async fn heuristic_freshness_applies_only_where_the_route_enables_it() {
    let origin = MockOrigin::start().await.unwrap();
    let modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10 * 86_400));
    origin.on("/", move |seen| {
        Reply::ok(format!("{} #{}", seen.path, seen.nth))
            .header("last-modified", &modified)
            .into()
    });
    let routes = "[[route]]\nmatch = \"/guess/\"\nttl = \"0s\"\nheuristic = true\nheuristic_max = \"1h\"\n\
                  [[route]]\nmatch = \"/\"\nttl = \"0s\"\n";
    let corral = Setup::origin(&origin).toml(routes).start().await;
    let client = support::client();
    for path in ["/guess/a", "/exact/a"] {
        assert!(is_leader_miss(&get(&client, &corral.url(path)).await));
    }
    let guessed = get(&client, &corral.url("/guess/a")).await;
    assert!(is_hit(&guessed), "{guessed:?}");
    assert!(
        (3590..=3600).contains(&guessed.ttl()),
        "capped at heuristic_max: {guessed:?}"
    );
    // Without the heuristic it is stale on arrival: revalidated with its Last-Modified.
    let exact = get(&client, &corral.url("/exact/a")).await;
    assert!(exact.cache_status.contains("fwd=stale"), "{exact:?}");
    assert_eq!(exact.text(), "/exact/a #3");
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

#[tokio::test]
async fn targeted_cache_control_governs_and_corral_cache_control_stays_private() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/targeted/corral", |seen| {
        Reply::ok(format!("corral #{}", seen.nth))
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "no-store")
            .header("corral-cache-control", "max-age=60")
            .into()
    });
    origin.on("/targeted/cdn", |seen| {
        Reply::ok(format!("cdn #{}", seen.nth))
            .header("cache-control", "private")
            .header("cdn-cache-control", "max-age=60")
            .into()
    });
    origin.on("/targeted/private", |seen| {
        Reply::ok(format!("private #{}", seen.nth))
            .header("cache-control", "max-age=60")
            .header("corral-cache-control", "private")
            .into()
    });
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    for (path, body) in [
        ("/targeted/corral", "corral #1"),
        ("/targeted/cdn", "cdn #1"),
    ] {
        let first = get(&client, &corral.url(path)).await;
        let again = get(&client, &corral.url(path)).await;
        for seen in [&first, &again] {
            assert_eq!(seen.text(), body, "{seen:?}");
            assert!(seen.header("corral-cache-control").is_none(), "{seen:?}");
        }
        assert!(is_hit(&again), "{again:?}");
    }
    // The browser-facing fields go through untouched.
    let cdn = get(&client, &corral.url("/targeted/cdn")).await;
    assert_eq!(cdn.header("cache-control"), Some("private"));
    for nth in 1..=2 {
        let seen = get(&client, &corral.url("/targeted/private")).await;
        assert_eq!(seen.text(), format!("private #{nth}"));
        assert!(seen.header("corral-cache-control").is_none(), "{seen:?}");
    }
    assert_eq!(origin.hits(), 4);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_for_pass_lets_a_burst_reach_the_origin_concurrently() {
    const CLIENTS: usize = 800;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    {
        let gate = gate.clone();
        origin.on("/personal", move |seen| {
            let reply =
                Reply::ok(format!("personal #{}", seen.nth)).header("cache-control", "private");
            if seen.nth == 1 {
                reply.into()
            } else {
                Behaviour::gated(&gate, reply)
            }
        });
    }
    // Room for the whole burst at the origin, and time limits a loaded
    // machine opening 1,600 loopback connections cannot hit.
    let corral = Setup::origin(&origin)
        .origin_keys(
            "max_concurrent = 1024\nretries = 0\nconnect_timeout = \"30s\"\n\
             first_byte_timeout = \"60s\"\ntimeout = \"60s\"\nrequest_timeout = \"60s\"\n",
        )
        .toml("[[route]]\nmatch = \"/\"\nhit_for_pass = \"5m\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/personal");

    let first = get(&client, &url).await;
    assert!(
        first.cache_status.contains("detail=unshareable"),
        "{first:?}"
    );
    let started = std::time::Instant::now();
    let burst: Vec<_> = (0..CLIENTS).map(|_| spawn_get(&client, &url)).collect();
    let all_there = tokio::time::timeout(WITHIN, origin.wait_for_hits(1 + CLIENTS as u64)).await;
    assert!(
        all_there.is_ok(),
        "only {} of {CLIENTS} requests reached the origin while it held them: they were serialised",
        origin.hits() - 1
    );
    println!(
        "{CLIENTS} passes at the origin after {:?}",
        started.elapsed()
    );
    assert_eq!(
        origin.max_in_flight(),
        CLIENTS,
        "the origin saw the burst at once"
    );
    assert_eq!(
        corral.proxy.flights_in_flight(),
        0,
        "no request waited on a flight"
    );
    gate.open();
    let mut bodies = std::collections::HashSet::new();
    for seen in join_all(burst).await {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert!(
            seen.cache_status.contains("detail=hit-for-pass"),
            "{seen:?}"
        );
        assert!(
            bodies.insert(seen.text().to_owned()),
            "each client got its own answer"
        );
    }
    corral.shutdown().await;
}

/// Reads `response` until at least `at_least` body bytes arrived; returns the count.
async fn read_at_least(response: &mut reqwest::Response, at_least: usize) -> usize {
    let mut received = 0;
    while received < at_least {
        match tokio::time::timeout(WITHIN, response.chunk()).await {
            Ok(Ok(Some(chunk))) => received += chunk.len(),
            other => panic!("body stopped after {received} bytes: {other:?}"),
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_streams_through_without_being_stored() {
    const MIB: usize = 1 << 20;
    const SIZE: usize = 20 * MIB;
    let origin = MockOrigin::start().await.unwrap();
    let body = Bytes::from(vec![b'z'; SIZE]);
    let gates = [Gate::new(), Gate::new()];
    // Announced: streamed from the head on. Chunked: streamed once it outgrows
    // max_object_size (8 MiB), so the origin sends 9 MiB before it stalls.
    for ((path, declare_length, sent), gate) in [
        ("/big/declared", true, MIB),
        ("/big/chunked", false, 9 * MIB),
    ]
    .into_iter()
    .zip(gates.iter())
    {
        let (gate, body) = (gate.clone(), body.clone());
        origin.on(path, move |seen| {
            let reply = Reply::ok(body.clone());
            if seen.nth == 1 {
                Behaviour::Stall {
                    reply,
                    sent,
                    gate: gate.clone(),
                    declare_length,
                }
            } else {
                reply.into()
            }
        });
    }
    let corral = Setup::origin(&origin)
        .toml("[cache]\nmax_object_size = \"8MiB\"\n[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let cache = corral.proxy.cache();

    for ((path, _, sent), gate) in [
        ("/big/declared", true, MIB),
        ("/big/chunked", false, 9 * MIB),
    ]
    .into_iter()
    .zip(gates.iter())
    {
        let mut response = client
            .get(corral.url(path))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // Announced too large: the head says so. Chunked: the head left
        // before the body outgrew the limit (bytes go out as they arrive).
        let announced = path == "/big/declared";
        assert_eq!(
            support::cache_status(&response).contains("detail=too-large"),
            announced,
            "{path}: {response:?}"
        );
        // The client has the first bytes while the origin still holds the rest.
        let mut received = read_at_least(&mut response, sent).await;
        assert!(
            cache.weighted_size() < MIB as u64,
            "{path}: {}",
            cache.weighted_size()
        );
        gate.open();
        while let Some(chunk) = response.chunk().await.expect("body completes") {
            received += chunk.len();
        }
        assert_eq!(received, SIZE, "{path}");
        assert!(
            cache.weighted_size() < MIB as u64,
            "{path}: {}",
            cache.weighted_size()
        );
        assert_eq!(
            cache.variant_count(&key(&corral, path)),
            0,
            "{path} not stored"
        );

        // Not stored, and the key now passes straight through.
        let again = get(&client, &corral.url(path)).await;
        assert_eq!(again.text().len(), SIZE);
        assert!(
            again.cache_status.contains("detail=hit-for-pass"),
            "{path}: {:?}",
            again.cache_status
        );
    }
    assert_eq!(origin.hits(), 4);
    corral.shutdown().await;
}
