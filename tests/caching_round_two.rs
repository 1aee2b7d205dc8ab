//! Issue 12, "HTTP caching, round two", through real sockets: error statuses
//! with explicit freshness are stored for as long as they say (RFC 9111 §3),
//! an invalid or list-valued `Age` no longer makes a response stale (RFC 9111
//! §5.1), and HTTP-dates are read in all three forms and in any case (RFC
//! 9110 §5.6.7, RFC 9111 §4.2).
//!
//! Nothing sleeps: every freshness in play is far longer than a test runs,
//! and progress is read from the origin's hit counter.
mod support;

use support::{Seen, Setup, get, get_with};

use std::time::{Duration, SystemTime};

use corral::testing::mock_origin::{MockOrigin, Reply};
use reqwest::StatusCode;

/// One route caching everything under `/`, with corral's defaults.
const CACHE_ALL: &str = "[[route]]\nmatch = \"/\"\n";

fn is_hit(seen: &Seen) -> bool {
    seen.cache_status.contains("; hit") && !seen.cache_status.contains("detail=")
}

/// Corral with [`CACHE_ALL`] in front of an origin that answers every path
/// with `reply`, numbering its bodies so a second fetch would show.
async fn fronting(reply: Reply) -> (MockOrigin, support::TestProxy) {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    origin.on("/", move |seen| {
        let mut numbered = reply.clone();
        numbered.body = format!("{} #{}", seen.path, seen.nth).into();
        numbered.into()
    });
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    (origin, corral)
}

/// Asserts that two GETs of `path` reach the origin once: the first stores
/// the answer with `status`, the second is a hit with the same body.
async fn expect_stored_and_hit(
    origin: &MockOrigin,
    corral: &support::TestProxy,
    path: &str,
    status: StatusCode,
) {
    let client = support::client();
    let before = origin.hits();
    let first = get(&client, &corral.url(path)).await;
    assert_eq!(first.status, status, "{path}: {first:?}");
    assert!(first.cache_status.contains("stored"), "{path}: {first:?}");
    let second = get(&client, &corral.url(path)).await;
    assert_eq!(second.status, status, "{path}: {second:?}");
    assert!(is_hit(&second), "{path}: {second:?}");
    assert_eq!(second.text(), first.text(), "{path}");
    assert_eq!(
        origin.hits() - before,
        1,
        "{path}: the origin was asked once"
    );
}

// --- explicit freshness for every final status (RFC 9111 §3) ---------------

#[tokio::test]
async fn a_404_with_max_age_is_answered_from_cache_on_the_second_request() {
    let (origin, corral) = fronting(
        Reply::ok("x")
            .status(StatusCode::NOT_FOUND)
            .header("cache-control", "max-age=60"),
    )
    .await;
    expect_stored_and_hit(&origin, &corral, "/missing", StatusCode::NOT_FOUND).await;
    let again = get(&support::client(), &corral.url("/missing")).await;
    assert!(again.ttl() <= 60, "{again:?}");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn a_500_with_max_age_is_answered_from_cache_on_the_second_request() {
    let (origin, corral) = fronting(
        Reply::ok("x")
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("cache-control", "max-age=60"),
    )
    .await;
    expect_stored_and_hit(
        &origin,
        &corral,
        "/broken",
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    corral.shutdown().await;
}

#[tokio::test]
async fn other_error_statuses_with_explicit_freshness_are_answered_from_cache() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let cases: Vec<(&str, StatusCode, (&str, String))> = vec![
        (
            "/400",
            StatusCode::BAD_REQUEST,
            ("cache-control", "max-age=60".into()),
        ),
        (
            "/405",
            StatusCode::METHOD_NOT_ALLOWED,
            ("cache-control", "s-maxage=60".into()),
        ),
        ("/410", StatusCode::GONE, ("expires", expires.clone())),
        (
            "/414",
            StatusCode::URI_TOO_LONG,
            ("cdn-cache-control", "max-age=60".into()),
        ),
        ("/501", StatusCode::NOT_IMPLEMENTED, ("expires", expires)),
    ];
    for (path, status, (name, value)) in cases.clone() {
        origin.always(path, Reply::ok(path).status(status).header(name, &value));
    }
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    for (path, status, _) in cases {
        expect_stored_and_hit(&origin, &corral, path, status).await;
    }
    corral.shutdown().await;
}

#[tokio::test]
async fn error_statuses_without_explicit_freshness_reach_the_origin_every_time() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    for (path, status) in [
        ("/404", StatusCode::NOT_FOUND),
        ("/500", StatusCode::INTERNAL_SERVER_ERROR),
        ("/501", StatusCode::NOT_IMPLEMENTED),
    ] {
        origin.always(
            path,
            Reply::ok(path)
                .status(status)
                .header("cache-control", "public"),
        );
    }
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    let client = support::client();
    for path in ["/404", "/500", "/501"] {
        let before = origin.hits();
        for _ in 0..2 {
            let seen = get(&client, &corral.url(path)).await;
            assert!(!seen.cache_status.contains("stored"), "{path}: {seen:?}");
            assert!(!is_hit(&seen), "{path}: {seen:?}");
        }
        assert_eq!(origin.hits() - before, 2, "{path}");
    }
    corral.shutdown().await;
}

// --- Age (RFC 9111 §5.1) ----------------------------------------------------

#[tokio::test]
async fn an_invalid_age_is_ignored_and_the_response_stays_fresh() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    let invalid = ["5s", "-5", "1.5", "ten", ""];
    for (at, age) in invalid.iter().enumerate() {
        origin.always(
            &format!("/age/{at}"),
            Reply::ok("x")
                .header("cache-control", "max-age=600")
                .header("age", age),
        );
    }
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    for (at, age) in invalid.iter().enumerate() {
        let path = format!("/age/{at}");
        expect_stored_and_hit(&origin, &corral, &path, StatusCode::OK).await;
        let again = get(&support::client(), &corral.url(&path)).await;
        assert!(again.age() < 60, "{age:?}: {again:?}");
        assert!(again.ttl() > 540, "{age:?}: {again:?}");
    }
    corral.shutdown().await;
}

#[tokio::test]
async fn a_list_valued_age_counts_its_first_member() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    origin.always(
        "/one-line",
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("age", "500, 7"),
    );
    origin.always(
        "/two-lines",
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("age", "500")
            .header("age", "7"),
    );
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    for path in ["/one-line", "/two-lines"] {
        expect_stored_and_hit(&origin, &corral, path, StatusCode::OK).await;
        let again = get(&support::client(), &corral.url(path)).await;
        assert!((500..560).contains(&again.age()), "{path}: {again:?}");
        assert!(again.ttl() <= 100, "{path}: {again:?}");
    }
    corral.shutdown().await;
}

// --- HTTP-dates (RFC 9110 §5.6.7) ------------------------------------------

/// `at` as an IMF-fixdate, an RFC 850 date and an asctime date, each also in
/// lower and upper case.
fn three_forms(at: SystemTime) -> Vec<String> {
    let imf = httpdate::fmt_http_date(at);
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (day, date, month, year, time) = (
        &imf[0..3],
        &imf[5..7],
        &imf[8..11],
        &imf[12..16],
        &imf[17..25],
    );
    let full_day = match day {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!("{full_day}, {date}-{month}-{} {time} GMT", &year[2..]);
    let asctime = format!(
        "{day} {month} {:>2} {time} {year}",
        date.trim_start_matches('0')
    );
    let mut all = Vec::new();
    for form in [imf, rfc850, asctime] {
        all.push(form.to_ascii_lowercase());
        all.push(form.to_ascii_uppercase());
        all.push(form);
    }
    all
}

#[tokio::test]
async fn expires_in_any_http_date_form_and_case_gives_freshness() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    let forms = three_forms(SystemTime::now() + Duration::from_secs(3600));
    for (at, expires) in forms.iter().enumerate() {
        origin.always(
            &format!("/expires/{at}"),
            Reply::ok("x").header("expires", expires),
        );
    }
    // An Expires corral cannot read means "already expired" (RFC 9111 §5.3).
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    for (at, expires) in forms.iter().enumerate() {
        let path = format!("/expires/{at}");
        expect_stored_and_hit(&origin, &corral, &path, StatusCode::OK).await;
        let again = get(&support::client(), &corral.url(&path)).await;
        assert!(again.ttl() > 3000, "{expires:?}: {again:?}");
    }
    corral.shutdown().await;
}

#[tokio::test]
async fn if_modified_since_in_any_http_date_form_and_case_is_answered_304() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    let modified = SystemTime::now() - Duration::from_secs(86_400);
    origin.always(
        "/doc",
        Reply::ok("doc")
            .header("cache-control", "max-age=600")
            .header("last-modified", &httpdate::fmt_http_date(modified)),
    );
    let corral = Setup::origin(&origin).toml(CACHE_ALL).start().await;
    let client = support::client();
    let url = corral.url("/doc");
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);
    for since in three_forms(modified + Duration::from_secs(60)) {
        let seen = get_with(&client, &url, &[("if-modified-since", &since)]).await;
        assert_eq!(seen.status, StatusCode::NOT_MODIFIED, "{since:?}: {seen:?}");
    }
    for since in three_forms(modified - Duration::from_secs(60)) {
        let seen = get_with(&client, &url, &[("if-modified-since", &since)]).await;
        assert_eq!(seen.status, StatusCode::OK, "{since:?}: {seen:?}");
    }
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

// --- known interaction left to src/proxy -------------------------------------

/// Origin settings for the paused-clock test: no retries, no breaker, and
/// time limits far beyond any `advance`.
const PAUSED_ORIGIN: &str = "timeout = \"1h\"\nfirst_byte_timeout = \"1h\"\n\
    request_timeout = \"1h\"\nretries = 0\nbreaker_min_requests = 100000\n";

/// Client-side timers likewise out of the way of `advance`.
const PAUSED_SERVER: &str = "[server]\nidle_timeout = \"1h\"\nheader_read_timeout = \"1h\"\n";

/// A 5xx answering the revalidation of a stale entry that stale-if-error
/// covers is hidden from the client that asked (RFC 9111 §4.3.3: the cache
/// acts as if the origin had failed). It is storable now, and the fill
/// stores it over the stale entry, so every later request gets the stored
/// 500 instead of the stale answer. Ignored until `src/proxy/fill.rs`
/// decides not to store a 5xx it treats as a failure.
#[tokio::test(start_paused = true)]
async fn a_500_with_max_age_does_not_replace_a_stale_answer_kept_for_stale_if_error() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    origin.on("/sie", |seen| {
        if seen.nth == 1 {
            Reply::ok("good")
                .header("cache-control", "max-age=1, stale-if-error=600")
                .into()
        } else {
            Reply::ok(format!("bad #{}", seen.nth))
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .header("cache-control", "max-age=60")
                .into()
        }
    });
    let corral = Setup::origin(&origin)
        .origin_keys(PAUSED_ORIGIN)
        .toml(PAUSED_SERVER)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/sie");
    assert_eq!(get(&client, &url).await.text(), "good");
    tokio::time::advance(Duration::from_secs(2)).await;
    for attempt in 0..3 {
        let seen = get(&client, &url).await;
        assert_eq!(seen.status, StatusCode::OK, "#{attempt}: {seen:?}");
        assert_eq!(seen.text(), "good", "#{attempt}");
        assert!(
            seen.cache_status.contains("detail=stale-if-error"),
            "#{attempt}: {seen:?}"
        );
    }
    corral.shutdown().await;
}

/// Item 1: a 304 without validators to corral's own conditional request
/// validates the entry the request was made from: one origin request per
/// revalidation (the seed refetched unconditionally, two requests).
#[tokio::test(start_paused = true)]
async fn a_bare_304_validates_the_entry_it_was_asked_for_in_one_origin_request() {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    let modified = "Sun, 06 Nov 1994 08:49:37 GMT";
    origin.on("/dated", move |seen| {
        if seen.headers.contains_key("if-modified-since") {
            // Validates by date, and says nothing else (RFC 9110 §15.4.5 allows it).
            Reply::ok("")
                .status(StatusCode::NOT_MODIFIED)
                .header("cache-control", "max-age=60")
                .into()
        } else {
            Reply::ok("v1")
                .header("last-modified", modified)
                .header("cache-control", "max-age=60")
                .into()
        }
    });
    // Paused time jumps a minute: keep corral's idle timeout out of the way.
    let corral = Setup::origin(&origin)
        .toml("[server]\nidle_timeout = \"1h\"\n[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/dated");
    assert_eq!(support::get(&client, &url).await.text(), "v1");
    tokio::time::advance(std::time::Duration::from_secs(61)).await;
    let revalidated = support::get(&client, &url).await;
    assert_eq!(revalidated.text(), "v1", "{revalidated:?}");
    assert_eq!(
        revalidated.cache_status,
        "corral; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(origin.hits(), 2, "one fill, then exactly one revalidation");
    let again = support::get(&client, &url).await;
    assert!(again.cache_status.contains("; hit"), "{again:?}");
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

/// How the origin fails once the entry has gone stale (item 7).
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Answers 500.
    ServerError,
    /// Closes the connection without answering.
    Reset,
    /// Never answers.
    Hang,
}

/// Item 7: the quick start's config (`corral --origin … --ttl 60s`, and
/// `--stale-if-error` when given) in front of an origin whose answer said
/// `max-age=1` and that then fails as `failure` 2.5 s later: what the client
/// gets. Runs on a paused clock: a hang is answered after `stale_deadline`.
async fn after_the_origin_fails(
    failure: Failure,
    stale_if_error: Option<Duration>,
    client_says: &[(&str, &str)],
) -> support::Seen {
    let origin = MockOrigin::start().await.expect("mock origin starts");
    origin.on("/item", move |seen| {
        if seen.nth == 1 {
            return Reply::ok("stored")
                .header("cache-control", "max-age=1")
                .into();
        }
        match failure {
            Failure::ServerError => Reply::ok("oops")
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .into(),
            Failure::Reset => corral::testing::mock_origin::Behaviour::Reset,
            Failure::Hang => corral::testing::mock_origin::Behaviour::Hang,
        }
    });
    let any = "127.0.0.1:0".parse().expect("address");
    let quick_start =
        corral::config::Config::for_origin(&origin.url(), any, any, Duration::from_secs(60))
            .expect("quick-start config");
    let config = match stale_if_error {
        Some(window) => quick_start.with_stale_if_error(window),
        None => quick_start,
    };
    let corral = support::serve(corral::Corral::new(&config).expect("corral builds")).await;
    let client = support::client();
    let url = corral.url("/item");
    assert_eq!(support::get(&client, &url).await.text(), "stored");
    tokio::time::advance(Duration::from_millis(2_500)).await;
    let seen = support::get_with(&client, &url, client_says).await;
    corral.shutdown().await;
    seen
}

#[tokio::test(start_paused = true)]
async fn with_the_origin_down_the_quick_start_keeps_answering_from_the_cache() {
    // A 500 is an answer: serving stale over it needs permission.
    let error = after_the_origin_fails(Failure::ServerError, None, &[]).await;
    assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR, "{error:?}");
    // Disconnected: served stale by default (RFC 9111 §4.2.4), saying why.
    let reset = after_the_origin_fails(Failure::Reset, None, &[]).await;
    assert_eq!((reset.status, reset.text()), (StatusCode::OK, "stored"));
    assert_eq!(reset.cache_status, "corral; hit; detail=stale-disconnected");
    // A hanging origin holds the client for stale_deadline (1 s), not the
    // 10 s first-byte timeout.
    let hang = after_the_origin_fails(Failure::Hang, None, &[]).await;
    assert_eq!((hang.status, hang.text()), (StatusCode::OK, "stored"));
    assert_eq!(hang.cache_status, "corral; hit; detail=stale-slow-origin");
}

#[tokio::test(start_paused = true)]
async fn with_stale_if_error_the_quick_start_hides_a_500_too() {
    let window = Some(Duration::from_secs(60));
    let error = after_the_origin_fails(Failure::ServerError, window, &[]).await;
    assert_eq!((error.status, error.text()), (StatusCode::OK, "stored"));
    assert_eq!(error.cache_status, "corral; hit; detail=stale-if-error");
    let reset = after_the_origin_fails(Failure::Reset, window, &[]).await;
    assert_eq!(reset.cache_status, "corral; hit; detail=stale-if-error");
    let hang = after_the_origin_fails(Failure::Hang, window, &[]).await;
    assert_eq!(hang.cache_status, "corral; hit; detail=stale-slow-origin");
}

/// Item 7, the client's side of RFC 9111 §4.2.4: a client that asks for the
/// origin's word (`no-cache`, `max-age`) is not handed a stale copy because
/// the origin is down or slow; it gets the failure.
#[tokio::test(start_paused = true)]
async fn a_client_asking_for_the_origins_word_is_not_served_stale_while_it_is_down() {
    let no_cache = [("cache-control", "no-cache")];
    let reset = after_the_origin_fails(Failure::Reset, None, &no_cache).await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY, "{reset:?}");
    let max_age = [("cache-control", "max-age=0")];
    let hang = after_the_origin_fails(Failure::Hang, None, &max_age).await;
    assert_eq!(hang.status, StatusCode::GATEWAY_TIMEOUT, "{hang:?}");
}
