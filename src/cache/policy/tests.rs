//! Tests of the cache policy and of the directive grammar it reads.

use super::*;
use crate::http::directives::*;
use http::header::HeaderValue;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn directives(pairs: &[(&str, &str)]) -> ResponseDirectives {
    ResponseDirectives::from_headers(&headers(pairs))
}

fn request(pairs: &[(&str, &str)]) -> RequestDirectives {
    RequestDirectives::from_headers(&headers(pairs))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// 2024-01-01T00:00:00Z: a fixed wall clock for date maths.
fn wall(offset_secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + secs(1_704_067_200 + offset_secs)
}

fn date(offset_secs: u64) -> String {
    httpdate::fmt_http_date(wall(offset_secs))
}

fn lifetime(status: u16, pairs: &[(&str, &str)], policy: &FreshnessPolicy) -> Lifetime {
    let map = headers(pairs);
    let status = StatusCode::from_u16(status).unwrap();
    freshness_lifetime(
        status,
        &map,
        &ResponseDirectives::from_headers(&map),
        wall(0),
        policy,
    )
}

fn policy() -> FreshnessPolicy {
    FreshnessPolicy::with_ttl(secs(30))
}

/// Asserts `policy` gives a response with `status` and `pairs` a
/// lifetime of `secs` from `source`.
#[track_caller]
fn expect_lifetime(
    policy: &FreshnessPolicy,
    status: u16,
    pairs: &[(&str, &str)],
    secs: u64,
    source: LifetimeSource,
) {
    assert_eq!(lifetime(status, pairs, policy), life(secs, source));
}

fn life(duration: u64, source: LifetimeSource) -> Lifetime {
    Lifetime {
        duration: secs(duration),
        source,
    }
}

const NEVER_STALE: Reuse = Reuse::Stale {
    may_serve_while_revalidate: false,
    may_serve_if_error: false,
};

// --- response directives -------------------------------------------------

#[test]
fn directive_names_are_case_insensitive() {
    let parsed = directives(&[("cache-control", "Max-Age=60, NO-CACHE, Private, PUBLIC")]);
    assert_eq!(parsed.max_age, Some(secs(60)));
    assert_eq!(parsed.no_cache, Some(FieldScope::Whole));
    assert_eq!(parsed.private, Some(FieldScope::Whole));
    assert!(parsed.public);
}

#[test]
fn quoted_arguments_are_unquoted() {
    let parsed = directives(&[(
        "cache-control",
        "max-age=\"60\", s-maxage=\"90\", stale-if-error=\"5\"",
    )]);
    assert_eq!(parsed.max_age, Some(secs(60)));
    assert_eq!(parsed.s_maxage, Some(secs(90)));
    assert_eq!(parsed.stale_if_error, Some(secs(5)));
}

#[test]
fn commas_inside_quoted_arguments_do_not_split_directives() {
    let parsed = directives(&[(
        "cache-control",
        "no-cache=\"Set-Cookie, X-Trace\", max-age=5, private=\"a\\\"b\"",
    )]);
    assert_eq!(
        parsed.no_cache,
        Some(FieldScope::Fields(vec![
            "set-cookie".into(),
            "x-trace".into()
        ]))
    );
    assert_eq!(parsed.max_age, Some(secs(5)));
    assert_eq!(
        parsed.private,
        Some(FieldScope::Fields(vec!["a\"b".into()]))
    );
}

/// The `max-age` a response with one `name: value` line is read to carry.
fn max_age_of(name: &str, value: &str) -> Option<Duration> {
    directives(&[(name, value)]).max_age
}

#[test]
fn directives_span_multiple_header_lines() {
    let parsed = directives(&[
        ("cache-control", "public"),
        ("cache-control", "max-age=10, must-revalidate"),
        ("cache-control", "proxy-revalidate, immutable, no-store"),
    ]);
    assert!(parsed.public && parsed.must_revalidate && parsed.proxy_revalidate);
    assert!(parsed.immutable && parsed.no_store);
    assert_eq!(parsed.max_age, Some(secs(10)));
    assert_eq!(parsed.source, DirectiveSource::CacheControl);
}

#[test]
fn conflicting_duplicate_max_age_makes_the_response_stale() {
    let parsed = directives(&[
        ("cache-control", "max-age=60"),
        ("cache-control", "max-age=600"),
    ]);
    assert_eq!(parsed.max_age, Some(Duration::ZERO));
    let parsed = directives(&[("cache-control", "s-maxage=60, s-maxage=5")]);
    assert_eq!(parsed.s_maxage, Some(Duration::ZERO));
}

#[test]
fn identical_duplicate_max_age_is_not_a_conflict() {
    assert_eq!(
        max_age_of("cache-control", "max-age=60, max-age=\"60\""),
        Some(secs(60))
    );
}

#[test]
fn malformed_max_age_makes_the_response_stale() {
    for value in [
        "max-age=abc",
        "max-age=-5",
        "max-age=1.5",
        "max-age=",
        "max-age",
        "max-age=\"\"",
        "max-age=10s",
    ] {
        let parsed = directives(&[("cache-control", value)]);
        assert_eq!(parsed.max_age, Some(Duration::ZERO), "{value}");
        assert_eq!(
            lifetime(200, &[("cache-control", value)], &policy()),
            life(0, LifetimeSource::MaxAge),
            "{value}"
        );
    }
    let parsed = directives(&[("cache-control", "s-maxage=soon")]);
    assert_eq!(parsed.s_maxage, Some(Duration::ZERO));
}

#[test]
fn delta_seconds_overflow_saturates_at_2_pow_31() {
    let parsed = directives(&[(
        "cache-control",
        "max-age=99999999999999999999999, stale-if-error=4294967296",
    )]);
    assert_eq!(parsed.max_age, Some(DELTA_SECONDS_MAX));
    assert_eq!(parsed.stale_if_error, Some(DELTA_SECONDS_MAX));
    assert_eq!(DELTA_SECONDS_MAX, secs(2_147_483_648));
    let route = FreshnessPolicy::with_ttl(secs(u64::MAX));
    assert_eq!(lifetime(200, &[], &route).duration, DELTA_SECONDS_MAX);
}

#[test]
fn no_cache_and_private_keep_their_field_names() {
    let parsed = directives(&[("cache-control", "no-cache=\"x-a\", no-cache=\"X-B\"")]);
    assert_eq!(
        parsed.no_cache,
        Some(FieldScope::Fields(vec!["x-a".into(), "x-b".into()]))
    );
    let parsed = directives(&[("cache-control", "private=\"x-a\", private")]);
    assert_eq!(parsed.private, Some(FieldScope::Whole));
}

#[test]
fn malformed_stale_windows_are_ignored() {
    let parsed = directives(&[(
        "cache-control",
        "stale-while-revalidate=soon, stale-if-error",
    )]);
    assert_eq!(parsed.stale_while_revalidate, None);
    assert_eq!(parsed.stale_if_error, None);
    let parsed = directives(&[("cache-control", "stale-while-revalidate=30")]);
    assert_eq!(parsed.stale_while_revalidate, Some(secs(30)));
}

#[test]
fn conflicting_stale_windows_take_the_smallest() {
    let parsed = directives(&[(
        "cache-control",
        "stale-while-revalidate=30, stale-while-revalidate=10, stale-if-error=9, stale-if-error=90",
    )]);
    assert_eq!(parsed.stale_while_revalidate, Some(secs(10)));
    assert_eq!(parsed.stale_if_error, Some(secs(9)));
}

#[test]
fn permissive_directives_with_an_argument_grant_nothing() {
    let parsed = directives(&[("cache-control", "public=yes, immutable=1")]);
    assert!(!parsed.public && !parsed.immutable);
}

#[test]
fn corral_cache_control_beats_cdn_cache_control_beats_cache_control() {
    let all = [
        ("cache-control", "max-age=10"),
        ("cdn-cache-control", "max-age=20"),
        ("corral-cache-control", "max-age=30"),
    ];
    let parsed = directives(&all);
    assert_eq!(parsed.source, DirectiveSource::CorralCacheControl);
    assert_eq!(parsed.max_age, Some(secs(30)));
    let parsed = directives(&all[..2]);
    assert_eq!(parsed.source, DirectiveSource::CdnCacheControl);
    assert_eq!(parsed.max_age, Some(secs(20)));
    let parsed = directives(&all[..1]);
    assert_eq!(parsed.source, DirectiveSource::CacheControl);
    assert_eq!(parsed.max_age, Some(secs(10)));
}

#[test]
fn targeted_field_replaces_cache_control_entirely() {
    let parsed = directives(&[
        ("cache-control", "private, no-store, max-age=5"),
        (
            "cdn-cache-control",
            "max-age=600, stale-while-revalidate=30",
        ),
    ]);
    assert!(!parsed.no_store);
    assert_eq!(parsed.private, None);
    assert_eq!(parsed.max_age, Some(secs(600)));
    assert_eq!(parsed.stale_while_revalidate, Some(secs(30)));
    // An unknown directive still makes the targeted field non-empty.
    let parsed = directives(&[("cache-control", "no-store"), ("cdn-cache-control", "none")]);
    assert_eq!(parsed.source, DirectiveSource::CdnCacheControl);
    assert!(!parsed.no_store);
}

#[test]
fn invalid_or_empty_targeted_field_is_ignored() {
    for bad in [
        "Max-Age=60",
        "max-age=60,",
        "max-age=60 s-maxage=1",
        "",
        "max-age=\"60",
        "max-age=(1 2",
    ] {
        let parsed = directives(&[
            ("cache-control", "max-age=5"),
            ("corral-cache-control", bad),
            ("cdn-cache-control", "max-age=7"),
        ]);
        assert_eq!(parsed.source, DirectiveSource::CdnCacheControl, "{bad:?}");
        assert_eq!(parsed.max_age, Some(secs(7)), "{bad:?}");
    }
}

#[test]
fn targeted_field_duplicate_keys_keep_the_last() {
    assert_eq!(
        max_age_of("cdn-cache-control", "max-age=60, max-age=600"),
        Some(secs(600))
    );
}

#[test]
fn targeted_field_wrong_typed_max_age_makes_the_response_stale() {
    for value in [
        "max-age=1.5",
        "max-age=\"60\"",
        "max-age=-1",
        "max-age",
        "max-age=soon",
    ] {
        let parsed = directives(&[
            ("cdn-cache-control", value),
            ("cache-control", "max-age=60"),
        ]);
        assert_eq!(parsed.max_age, Some(Duration::ZERO), "{value}");
    }
    let parsed = directives(&[("cdn-cache-control", "stale-if-error=1.5")]);
    assert_eq!(parsed.stale_if_error, None);
}

#[test]
fn targeted_field_false_booleans_turn_directives_off() {
    let parsed = directives(&[(
        "cdn-cache-control",
        "no-store=?0, private=?0, public=?0, must-revalidate",
    )]);
    assert!(!parsed.no_store && !parsed.public);
    assert_eq!(parsed.private, None);
    assert!(parsed.must_revalidate);
    // Any other value keeps a restrictive directive on.
    let parsed = directives(&[("cdn-cache-control", "no-store=1, private=tok")]);
    assert!(parsed.no_store);
    assert_eq!(parsed.private, Some(FieldScope::Whole));
}

#[test]
fn targeted_field_parameters_are_ignored() {
    let parsed = directives(&[("cdn-cache-control", "max-age=60;ext=1;x, public;y=\"z\"")]);
    assert_eq!(parsed.max_age, Some(secs(60)));
    assert!(parsed.public);
}

#[test]
fn targeted_field_string_no_cache_lists_fields() {
    let parsed = directives(&[("cdn-cache-control", "no-cache=\"set-cookie, x-a\", private")]);
    assert_eq!(
        parsed.no_cache,
        Some(FieldScope::Fields(vec!["set-cookie".into(), "x-a".into()]))
    );
    assert_eq!(parsed.private, Some(FieldScope::Whole));
}

#[test]
fn targeted_field_lines_are_joined() {
    let parsed = directives(&[
        ("cdn-cache-control", "max-age=60"),
        ("cdn-cache-control", "stale-if-error=10"),
    ]);
    assert_eq!(parsed.max_age, Some(secs(60)));
    assert_eq!(parsed.stale_if_error, Some(secs(10)));
}

// --- request directives --------------------------------------------------

#[test]
fn request_directives_are_parsed() {
    let parsed = request(&[(
        "cache-control",
        "No-Cache, no-store, max-age=5, max-stale=10, min-fresh=\"3\", only-if-cached",
    )]);
    assert_eq!(
        parsed,
        RequestDirectives {
            no_cache: true,
            no_store: true,
            max_age: Some(secs(5)),
            max_stale: Some(MaxStale::Limit(secs(10))),
            min_fresh: Some(secs(3)),
            only_if_cached: true,
        }
    );
}

#[test]
fn max_stale_without_a_value_accepts_any_staleness() {
    assert_eq!(
        request(&[("cache-control", "max-stale")]).max_stale,
        Some(MaxStale::Any)
    );
}

#[test]
fn pragma_no_cache_counts_only_without_cache_control() {
    assert!(request(&[("pragma", "no-cache")]).no_cache);
    assert!(request(&[("pragma", "No-Cache, x")]).no_cache);
    assert!(!request(&[("pragma", "no-cache"), ("cache-control", "max-stale")]).no_cache);
    assert!(!request(&[("pragma", "no-store")]).no_cache);
}

#[test]
fn malformed_request_arguments_are_ignored() {
    let parsed = request(&[("cache-control", "max-age=-1, min-fresh=soon, max-stale=1.5")]);
    assert_eq!(parsed, RequestDirectives::default());
}

#[test]
fn conflicting_request_duplicates_take_the_most_restrictive() {
    let parsed = request(&[
        ("cache-control", "max-age=50, min-fresh=5, max-stale"),
        (
            "cache-control",
            "max-age=10, min-fresh=20, max-stale=30, max-stale=40",
        ),
    ]);
    assert_eq!(parsed.max_age, Some(secs(10)));
    assert_eq!(parsed.min_fresh, Some(secs(20)));
    assert_eq!(parsed.max_stale, Some(MaxStale::Limit(secs(30))));
}

// --- freshness lifetime --------------------------------------------------

#[test]
fn s_maxage_beats_max_age_beats_expires() {
    let expires = date(500);
    let all = [
        ("date", date(0)),
        ("expires", expires),
        ("cache-control", "max-age=60, s-maxage=90".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (*n, v.as_str())).collect();
    expect_lifetime(&policy(), 200, &pairs, 90, LifetimeSource::SMaxAge);
    let mut pairs = pairs;
    pairs[2].1 = "max-age=60";
    expect_lifetime(&policy(), 200, &pairs, 60, LifetimeSource::MaxAge);
    pairs.pop();
    expect_lifetime(&policy(), 200, &pairs, 500, LifetimeSource::Expires);
}

#[test]
fn expires_lifetime_is_expires_minus_date() {
    let (d, e) = (date(100), date(400));
    expect_lifetime(
        &policy(),
        200,
        &[("date", &d), ("expires", &e)],
        300,
        LifetimeSource::Expires,
    );
    // Before Date: already expired, never negative.
    expect_lifetime(
        &policy(),
        200,
        &[("date", &e), ("expires", &d)],
        0,
        LifetimeSource::Expires,
    );
}

#[test]
fn expires_without_a_valid_date_counts_from_receipt() {
    let e = date(120);
    expect_lifetime(
        &policy(),
        200,
        &[("expires", &e)],
        120,
        LifetimeSource::Expires,
    );
    expect_lifetime(
        &policy(),
        200,
        &[("date", "yesterday"), ("expires", &e)],
        120,
        LifetimeSource::Expires,
    );
}

#[test]
fn invalid_expires_means_already_expired() {
    for bad in ["0", "-1", "tomorrow", ""] {
        assert_eq!(
            lifetime(200, &[("expires", bad)], &policy()),
            life(0, LifetimeSource::Expires),
            "{bad:?}"
        );
    }
}

/// The RFC 9110 §5.6.7 example instant, `Sun, 06 Nov 1994 08:49:37 GMT`,
/// plus `offset` seconds.
fn rfc_example(offset: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + secs(784_111_777 + offset)
}

/// The RFC's example date in all three forms, in the case sent and in others.
const RFC_EXAMPLE_DATES: [&str; 9] = [
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
    "sun, 06 nov 1994 08:49:37 gmt",
    "SUN, 06 NOV 1994 08:49:37 GMT",
    "sunday, 06-nov-94 08:49:37 gmt",
    "SUNDAY, 06-NOV-94 08:49:37 GMT",
    "sun nov  6 08:49:37 1994",
    "SUN NOV  6 08:49:37 1994",
];

/// Dates every one of those fields must treat as invalid.
const MALFORMED_DATES: [&str; 7] = [
    "",
    "Sun, 06 Nov 1994 08:49:37",
    "Mon, 06 Nov 1994 08:49:37 GMT",
    "Thu, 30 Feb 2023 08:49:37 GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT junk",
    "Sunday, 06-Nov-94 08:49:37 UTC",
    "Sun Nov 6 08:49:37 1994",
];

fn lifetime_at(status: u16, pairs: &[(&str, &str)], received_at: SystemTime) -> Lifetime {
    let map = headers(pairs);
    freshness_lifetime(
        StatusCode::from_u16(status).unwrap(),
        &map,
        &ResponseDirectives::from_headers(&map),
        received_at,
        &policy(),
    )
}

#[test]
fn expires_and_date_accept_every_http_date_form_in_any_case() {
    let received = rfc_example(10);
    for e in RFC_EXAMPLE_DATES {
        // Expires 60 s after Date, both in this form.
        let d = httpdate::fmt_http_date(rfc_example(0) - secs(60));
        assert_eq!(
            lifetime_at(200, &[("date", &d), ("expires", e)], received),
            life(60, LifetimeSource::Expires),
            "{e:?}"
        );
        // As Date: the apparent age, and the base Expires counts from.
        let later = httpdate::fmt_http_date(rfc_example(90));
        assert_eq!(
            lifetime_at(200, &[("date", e), ("expires", &later)], received),
            life(90, LifetimeSource::Expires),
            "{e:?}"
        );
        let map = headers(&[("date", e)]);
        let now = Instant::now();
        assert_eq!(
            corrected_initial_age(&map, now, now, received),
            secs(10),
            "{e:?}"
        );
    }
}

#[test]
fn malformed_expires_is_expired_and_malformed_date_is_the_receipt_time() {
    let received = rfc_example(0);
    let later = httpdate::fmt_http_date(rfc_example(90));
    for bad in MALFORMED_DATES {
        assert_eq!(
            lifetime_at(200, &[("expires", bad)], received),
            life(0, LifetimeSource::Expires),
            "{bad:?}"
        );
        assert_eq!(
            lifetime_at(200, &[("date", bad), ("expires", &later)], received),
            life(90, LifetimeSource::Expires),
            "{bad:?}"
        );
    }
}

#[test]
fn last_modified_accepts_every_http_date_form_in_any_case() {
    let heuristic = heuristic_policy();
    let d = httpdate::fmt_http_date(rfc_example(1000));
    for lm in RFC_EXAMPLE_DATES {
        let pairs = [("last-modified", lm), ("date", d.as_str())];
        expect_lifetime(&heuristic, 200, &pairs, 100, LifetimeSource::Heuristic);
        assert!(has_validator(&headers(&[("last-modified", lm)])), "{lm:?}");
        let conditional = conditional_headers(&headers(&[("last-modified", lm)]));
        assert_eq!(conditional[header::IF_MODIFIED_SINCE], lm, "sent verbatim");
    }
    for bad in MALFORMED_DATES {
        let pairs = [("last-modified", bad), ("date", d.as_str())];
        expect_lifetime(&heuristic, 200, &pairs, 30, LifetimeSource::Route);
        assert!(
            !has_validator(&headers(&[("last-modified", bad)])),
            "{bad:?}"
        );
    }
}

#[test]
fn if_modified_since_accepts_every_http_date_form_in_any_case() {
    let at = |offset| httpdate::fmt_http_date(rfc_example(offset));
    // The same instant counts as not modified since.
    let (before, after) = (at(0), at(1));
    for since in RFC_EXAMPLE_DATES {
        assert!(
            modified_since(since, &[("last-modified", &before)]),
            "{since:?}"
        );
        assert!(
            !modified_since(since, &[("last-modified", &after)]),
            "{since:?}"
        );
        // The stored Last-Modified in another form and case too.
        assert!(
            modified_since(&before, &[("last-modified", since)]),
            "{since:?}"
        );
    }
    for bad in MALFORMED_DATES {
        assert!(
            !modified_since(bad, &[("last-modified", &before)]),
            "{bad:?}"
        );
    }
}

#[test]
fn conflicting_expires_lines_mean_already_expired() {
    let (a, b) = (date(60), date(120));
    expect_lifetime(
        &policy(),
        200,
        &[("expires", &a), ("expires", &b)],
        0,
        LifetimeSource::Expires,
    );
    expect_lifetime(
        &policy(),
        200,
        &[("expires", &a), ("expires", &a)],
        60,
        LifetimeSource::Expires,
    );
}

#[test]
fn targeted_field_ignores_expires() {
    let e = date(600);
    assert_eq!(
        lifetime(
            200,
            &[("expires", &e), ("cdn-cache-control", "public")],
            &policy()
        ),
        life(30, LifetimeSource::Route)
    );
}

#[test]
fn route_ttl_is_the_default_for_200_without_explicit_freshness() {
    expect_lifetime(&policy(), 200, &[], 30, LifetimeSource::Route);
    expect_lifetime(
        &policy(),
        200,
        &[("cache-control", "public")],
        30,
        LifetimeSource::Route,
    );
    expect_lifetime(
        &policy(),
        200,
        &[("cache-control", "max-age=5")],
        5,
        LifetimeSource::MaxAge,
    );
}

#[test]
fn override_origin_makes_the_route_ttl_win_for_200_only() {
    let route = FreshnessPolicy {
        override_origin: true,
        ..policy()
    };
    let cc = [("cache-control", "s-maxage=5, max-age=1")];
    assert_eq!(lifetime(200, &cc, &route), life(30, LifetimeSource::Route));
    assert_eq!(lifetime(301, &cc, &route), life(5, LifetimeSource::SMaxAge));
}

#[test]
fn negative_ttl_applies_to_404_and_410_only_when_set() {
    assert_eq!(lifetime(404, &[], &policy()), life(0, LifetimeSource::None));
    let negative = FreshnessPolicy {
        negative_ttl: Some(secs(7)),
        ..policy()
    };
    expect_lifetime(&negative, 404, &[], 7, LifetimeSource::NegativeTtl);
    expect_lifetime(&negative, 410, &[], 7, LifetimeSource::NegativeTtl);
    assert_eq!(lifetime(500, &[], &negative), life(0, LifetimeSource::None));
    // The origin's own freshness still wins unless the route overrides it.
    let cc = [("cache-control", "max-age=60")];
    expect_lifetime(&negative, 404, &cc, 60, LifetimeSource::MaxAge);
    let overriding = FreshnessPolicy {
        override_origin: true,
        ..negative
    };
    expect_lifetime(&overriding, 404, &cc, 7, LifetimeSource::NegativeTtl);
}

/// The default policy with the heuristic on, capped at an hour.
fn heuristic_policy() -> FreshnessPolicy {
    FreshnessPolicy {
        heuristic: true,
        heuristic_max: secs(3600),
        ..policy()
    }
}

#[test]
fn heuristic_is_a_tenth_of_date_minus_last_modified_capped() {
    let heuristic = heuristic_policy();
    let (lm, d) = (date(0), date(1000));
    let pairs = [("last-modified", lm.as_str()), ("date", d.as_str())];
    expect_lifetime(&heuristic, 200, &pairs, 100, LifetimeSource::Heuristic);
    let capped = FreshnessPolicy {
        heuristic_max: secs(40),
        ..heuristic.clone()
    };
    expect_lifetime(&capped, 200, &pairs, 40, LifetimeSource::Heuristic);
    // Explicit freshness disables the heuristic.
    let explicit = [pairs[0], pairs[1], ("cache-control", "max-age=3")];
    expect_lifetime(&heuristic, 200, &explicit, 3, LifetimeSource::MaxAge);
}

#[test]
fn heuristic_only_when_enabled_and_status_cacheable_or_public() {
    let heuristic = heuristic_policy();
    let (lm, d) = (date(0), date(1000));
    let pairs = [("last-modified", lm.as_str()), ("date", d.as_str())];
    expect_lifetime(&policy(), 200, &pairs, 30, LifetimeSource::Route);
    expect_lifetime(&heuristic, 301, &pairs, 100, LifetimeSource::Heuristic);
    expect_lifetime(&heuristic, 302, &pairs, 0, LifetimeSource::None);
    let public = [pairs[0], pairs[1], ("cache-control", "public")];
    expect_lifetime(&heuristic, 302, &public, 100, LifetimeSource::Heuristic);
    for status in [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501] {
        assert!(is_heuristically_cacheable(
            StatusCode::from_u16(status).unwrap()
        ));
    }
    for status in [201, 302, 303, 307, 400, 403, 500, 503] {
        assert!(!is_heuristically_cacheable(
            StatusCode::from_u16(status).unwrap()
        ));
    }
}

#[test]
fn heuristic_is_skipped_when_last_modified_is_after_date() {
    let heuristic = heuristic_policy();
    let (lm, d) = (date(1000), date(0));
    let pairs = [("last-modified", lm.as_str()), ("date", d.as_str())];
    expect_lifetime(&heuristic, 200, &pairs, 30, LifetimeSource::Route);
}

#[test]
fn other_statuses_without_freshness_are_stale_on_arrival() {
    assert_eq!(lifetime(302, &[], &policy()), life(0, LifetimeSource::None));
    assert_eq!(lifetime(204, &[], &policy()), life(0, LifetimeSource::None));
}

// --- age -----------------------------------------------------------------

#[test]
fn apparent_age_is_receipt_minus_date_never_negative() {
    assert_eq!(apparent_age(Some(wall(0)), wall(25)), secs(25));
    assert_eq!(apparent_age(Some(wall(25)), wall(0)), Duration::ZERO);
    assert_eq!(apparent_age(None, wall(0)), Duration::ZERO);
}

#[test]
fn corrected_age_value_adds_the_response_delay_to_age() {
    let sent = Instant::now();
    let received = sent + secs(2);
    assert_eq!(corrected_age_value(secs(10), sent, received), secs(12));
    assert_eq!(
        corrected_age_value(DELTA_SECONDS_MAX, sent, received),
        DELTA_SECONDS_MAX
    );
}

#[test]
fn corrected_initial_age_takes_the_larger_estimate() {
    let sent = Instant::now();
    let received = sent + secs(1);
    // Date says 30 s old, Age says 10 s: the clock estimate wins.
    let d = date(0);
    let map = headers(&[("date", &d), ("age", "10")]);
    assert_eq!(
        corrected_initial_age(&map, sent, received, wall(30)),
        secs(30)
    );
    // Age 100 plus the 1 s round trip beats the date estimate.
    let map = headers(&[("date", &d), ("age", "100")]);
    assert_eq!(
        corrected_initial_age(&map, sent, received, wall(30)),
        secs(101)
    );
    // No Date, no Age: only the round trip.
    assert_eq!(
        corrected_initial_age(&HeaderMap::new(), sent, received, wall(0)),
        secs(1)
    );
}

/// `age_value` of a response with these `Age` lines.
fn age_of(lines: &[&str]) -> Option<Duration> {
    let pairs: Vec<(&str, &str)> = lines.iter().map(|line| ("age", *line)).collect();
    age_value(&headers(&pairs))
}

#[test]
fn age_is_delta_seconds() {
    // RFC 9111 §5.1's example.
    assert_eq!(age_of(&["60"]), Some(secs(60)));
    assert_eq!(age_of(&["0"]), Some(Duration::ZERO));
    assert_eq!(age_of(&[" 42 "]), Some(secs(42)));
    assert_eq!(age_of(&["0000000007"]), Some(secs(7)));
    assert_eq!(age_of(&[]), None);
    // Beyond 2^31 seconds: 2^31 (RFC 9111 §1.2.2).
    assert_eq!(age_of(&["99999999999999999999"]), Some(DELTA_SECONDS_MAX));
}

#[test]
fn list_valued_age_uses_its_first_member() {
    assert_eq!(age_of(&["5, 7"]), Some(secs(5)));
    assert_eq!(age_of(&["5,7,bogus"]), Some(secs(5)));
    assert_eq!(age_of(&["5", "7"]), Some(secs(5)));
    assert_eq!(age_of(&["7", "bogus"]), Some(secs(7)));
    // Empty list members are not members (RFC 9110 §5.6.1).
    assert_eq!(age_of(&[", 5, 7"]), Some(secs(5)));
    assert_eq!(age_of(&["", "5"]), Some(secs(5)));
    let now = Instant::now();
    let map = headers(&[("age", "5, 7")]);
    assert_eq!(corrected_initial_age(&map, now, now, wall(0)), secs(5));
    let map = headers(&[("age", "5"), ("age", "7")]);
    assert_eq!(corrected_initial_age(&map, now, now, wall(0)), secs(5));
}

#[test]
fn invalid_age_is_ignored_as_if_absent() {
    for bad in [
        "-5", "+5", "ten", "1.5", "5s", "5 7", "0x10", "", " ", ",", "bogus, 7",
    ] {
        assert_eq!(age_of(&[bad]), None, "{bad:?}");
    }
    // The first member decides: an invalid one is not replaced by a later one.
    assert_eq!(age_of(&["bogus", "7"]), None);
    assert_eq!(age_of(&["-1", "7"]), None);
}

#[test]
fn invalid_age_leaves_the_other_age_estimates() {
    let sent = Instant::now();
    let received = sent + secs(2);
    let d = date(0);
    for bad in ["-5", "ten", "1.5", "5s", ""] {
        // No Date: only the round trip counts, never "stale".
        let map = headers(&[("age", bad)]);
        assert_eq!(
            corrected_initial_age(&map, sent, received, wall(0)),
            secs(2),
            "{bad:?}"
        );
        // With Date: the apparent age.
        let map = headers(&[("date", &d), ("age", bad)]);
        assert_eq!(
            corrected_initial_age(&map, sent, received, wall(30)),
            secs(30),
            "{bad:?}"
        );
    }
    // So a response with an invalid Age is as fresh as one without.
    let route = policy();
    let map = headers(&[("age", "5s"), ("cache-control", "max-age=60")]);
    let lifetime = freshness_lifetime(
        StatusCode::OK,
        &map,
        &ResponseDirectives::from_headers(&map),
        wall(0),
        &route,
    );
    let initial = corrected_initial_age(&map, sent, sent, wall(0));
    assert_eq!(
        fresh_until(sent, lifetime.duration, initial),
        sent + secs(60)
    );
}

#[tokio::test(start_paused = true)]
async fn current_age_adds_resident_time_on_tokio_time() {
    let received = Instant::now();
    tokio::time::advance(secs(45)).await;
    assert_eq!(current_age(secs(5), received, Instant::now()), secs(50));
    // A `now` before the response counts as no resident time.
    assert_eq!(current_age(secs(5), Instant::now(), received), secs(5));
}

#[test]
fn fresh_until_subtracts_the_initial_age_from_the_lifetime() {
    let received = Instant::now();
    assert_eq!(
        fresh_until(received, secs(60), secs(10)),
        received + secs(50)
    );
    assert_eq!(fresh_until(received, secs(60), secs(90)), received);
}

// --- storability ---------------------------------------------------------

fn storable(
    method: Method,
    request_pairs: &[(&str, &str)],
    status: u16,
    response_pairs: &[(&str, &str)],
    policy: &FreshnessPolicy,
) -> Option<NotStorable> {
    let response = headers(response_pairs);
    let request = headers(request_pairs);
    not_storable_reason(
        &method,
        &RequestFacts::new(&request, &RequestDirectives::from_headers(&request)),
        StatusCode::from_u16(status).unwrap(),
        &response,
        &ResponseDirectives::from_headers(&response),
        policy,
    )
}

#[test]
fn only_get_responses_are_stored() {
    assert_eq!(storable(Method::GET, &[], 200, &[], &policy()), None);
    for method in [Method::HEAD, Method::POST, Method::OPTIONS] {
        assert_eq!(
            storable(method, &[], 200, &[], &policy()),
            Some(NotStorable::Method)
        );
    }
}

/// Every way a response can carry explicit freshness (RFC 9111 §4.2.1),
/// each worth 60 s, with the lifetime source it gives.
fn explicit_freshness() -> Vec<(Vec<(&'static str, String)>, LifetimeSource)> {
    vec![
        (
            vec![("cache-control", "s-maxage=60".to_owned())],
            LifetimeSource::SMaxAge,
        ),
        (
            vec![("cache-control", "max-age=60".to_owned())],
            LifetimeSource::MaxAge,
        ),
        (
            vec![("date", date(0)), ("expires", date(60))],
            LifetimeSource::Expires,
        ),
        (
            vec![("cdn-cache-control", "max-age=60".to_owned())],
            LifetimeSource::MaxAge,
        ),
        (
            vec![("corral-cache-control", "s-maxage=60".to_owned())],
            LifetimeSource::SMaxAge,
        ),
    ]
}

/// Asserts a response with `status` is stored with each explicit freshness,
/// for 60 s, under `policy`.
#[track_caller]
fn expect_stored_for_its_explicit_freshness(status: u16, policy: &FreshnessPolicy) {
    for (pairs, source) in explicit_freshness() {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(
            storable(Method::GET, &[], status, &pairs, policy),
            None,
            "{status} {pairs:?}"
        );
        assert_eq!(
            lifetime(status, &pairs, policy),
            life(60, source),
            "{status} {pairs:?}"
        );
    }
}

#[test]
fn non_final_partial_and_not_modified_statuses_are_never_stored() {
    for status in [100, 101, 103, 206, 304] {
        for (pairs, _) in explicit_freshness() {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(
                storable(Method::GET, &[], status, &pairs, &policy()),
                Some(NotStorable::Status),
                "{status} {pairs:?}"
            );
        }
    }
}

#[test]
fn success_and_redirect_statuses_with_explicit_freshness_are_stored() {
    for status in [200, 201, 202, 203, 204, 226, 300, 301, 302, 303, 307, 308] {
        expect_stored_for_its_explicit_freshness(status, &policy());
    }
}

#[test]
fn client_error_statuses_with_explicit_freshness_are_stored() {
    for status in [400, 401, 403, 404, 405, 409, 410, 414, 418, 429, 451, 499] {
        expect_stored_for_its_explicit_freshness(status, &policy());
    }
}

#[test]
fn server_error_statuses_with_explicit_freshness_are_stored() {
    for status in [500, 501, 502, 503, 504, 599] {
        expect_stored_for_its_explicit_freshness(status, &policy());
    }
}

#[test]
fn error_statuses_without_explicit_freshness_are_not_stored() {
    let heuristic = heuristic_policy();
    let (lm, d) = (date(0), date(1000));
    for status in [400, 403, 404, 405, 410, 414, 429, 500, 501, 502, 503] {
        // Nothing at all; `public`; a Last-Modified for the heuristic
        // (even for 405, 414, 501, heuristically cacheable by RFC 9110).
        for pairs in [
            &[][..],
            &[("cache-control", "public")][..],
            &[("cache-control", "no-cache, must-revalidate")][..],
            &[("last-modified", lm.as_str()), ("date", d.as_str())][..],
        ] {
            for route in [&policy(), &heuristic] {
                assert_eq!(
                    storable(Method::GET, &[], status, pairs, route),
                    Some(NotStorable::Status),
                    "{status} {pairs:?}"
                );
            }
        }
    }
}

#[test]
fn a_targeted_field_makes_expires_no_explicit_freshness_for_errors() {
    let e = date(60);
    let pairs = [("expires", e.as_str()), ("cdn-cache-control", "public")];
    for status in [404, 500] {
        assert_eq!(
            storable(Method::GET, &[], status, &pairs, &policy()),
            Some(NotStorable::Status),
            "{status}"
        );
    }
    // Expires alone is explicit freshness.
    let pairs = [("expires", e.as_str())];
    assert_eq!(storable(Method::GET, &[], 500, &pairs, &policy()), None);
}

#[test]
fn explicitly_fresh_errors_are_still_refused_for_what_forbids_any_status() {
    let max_age = ("cache-control", "max-age=60");
    for status in [404, 500] {
        assert_eq!(
            storable(Method::POST, &[], status, &[max_age], &policy()),
            Some(NotStorable::Method)
        );
        assert_eq!(
            storable(
                Method::GET,
                &[],
                status,
                &[("cache-control", "max-age=60, no-store")],
                &policy()
            ),
            Some(NotStorable::NoStore)
        );
        assert_eq!(
            storable(
                Method::GET,
                &[],
                status,
                &[("cache-control", "max-age=60, private")],
                &policy()
            ),
            Some(NotStorable::Private)
        );
        assert_eq!(
            storable(
                Method::GET,
                &[],
                status,
                &[max_age, ("set-cookie", "id=1")],
                &policy()
            ),
            Some(NotStorable::SetCookie)
        );
        assert_eq!(
            storable(
                Method::GET,
                &[("authorization", "Bearer x")],
                status,
                &[max_age],
                &policy()
            ),
            Some(NotStorable::Authorization)
        );
    }
}

#[test]
fn statuses_outside_100_to_599_are_never_stored() {
    for status in [600, 799, 999] {
        assert_eq!(
            storable(
                Method::GET,
                &[],
                status,
                &[("cache-control", "max-age=60")],
                &policy()
            ),
            Some(NotStorable::Status),
            "{status}"
        );
    }
}

#[test]
fn negative_caching_stores_404_and_410_only_when_configured() {
    let negative = FreshnessPolicy {
        negative_ttl: Some(secs(5)),
        ..policy()
    };
    assert_eq!(storable(Method::GET, &[], 404, &[], &negative), None);
    assert_eq!(storable(Method::GET, &[], 410, &[], &negative), None);
    assert_eq!(
        storable(Method::GET, &[], 404, &[], &policy()),
        Some(NotStorable::Status)
    );
    assert_eq!(
        storable(Method::GET, &[], 500, &[], &negative),
        Some(NotStorable::Status)
    );
    // Explicit freshness stores a 404/410 without negative caching, and wins
    // over negative_ttl unless the route overrides the origin.
    let cc = [("cache-control", "max-age=60")];
    for status in [404, 410] {
        assert_eq!(storable(Method::GET, &[], status, &cc, &policy()), None);
        expect_lifetime(&policy(), status, &cc, 60, LifetimeSource::MaxAge);
        expect_lifetime(&negative, status, &cc, 60, LifetimeSource::MaxAge);
    }
}

#[test]
fn no_store_in_request_or_response_forbids_storing() {
    assert_eq!(
        storable(
            Method::GET,
            &[],
            200,
            &[("cache-control", "max-age=60, no-store")],
            &policy()
        ),
        Some(NotStorable::NoStore)
    );
    assert_eq!(
        storable(
            Method::GET,
            &[("cache-control", "no-store")],
            200,
            &[],
            &policy()
        ),
        Some(NotStorable::NoStore)
    );
}

#[test]
fn private_with_or_without_fields_forbids_storing() {
    for cc in ["private", "private=\"x-user\"", "public, PRIVATE"] {
        assert_eq!(
            storable(Method::GET, &[], 200, &[("cache-control", cc)], &policy()),
            Some(NotStorable::Private),
            "{cc}"
        );
    }
}

#[test]
fn authorization_requires_public_must_revalidate_or_s_maxage() {
    let auth = [("authorization", "Bearer x")];
    assert_eq!(
        storable(
            Method::GET,
            &auth,
            200,
            &[("cache-control", "max-age=60")],
            &policy()
        ),
        Some(NotStorable::Authorization)
    );
    for cc in ["public", "must-revalidate", "s-maxage=60"] {
        assert_eq!(
            storable(Method::GET, &auth, 200, &[("cache-control", cc)], &policy()),
            None,
            "{cc}"
        );
    }
}

#[test]
fn set_cookie_and_vary_star_are_never_stored() {
    let public = ("cache-control", "public, max-age=60");
    assert_eq!(
        storable(
            Method::GET,
            &[],
            200,
            &[public, ("set-cookie", "id=1")],
            &policy()
        ),
        Some(NotStorable::SetCookie)
    );
    assert_eq!(
        storable(
            Method::GET,
            &[],
            200,
            &[public, ("vary", "accept, *")],
            &policy()
        ),
        Some(NotStorable::VaryStar)
    );
}

#[test]
fn response_needs_freshness_a_cacheable_status_public_or_a_route_ttl() {
    assert_eq!(
        storable(Method::GET, &[], 302, &[], &policy()),
        Some(NotStorable::NoFreshness)
    );
    let e = date(60);
    for pairs in [
        &[("cache-control", "max-age=60")][..],
        &[("cache-control", "public")][..],
        &[("expires", e.as_str())][..],
    ] {
        assert_eq!(
            storable(Method::GET, &[], 302, pairs, &policy()),
            None,
            "{pairs:?}"
        );
    }
    assert_eq!(storable(Method::GET, &[], 301, &[], &policy()), None);
    assert_eq!(
        storable(
            Method::GET,
            &[],
            201,
            &[],
            &FreshnessPolicy::with_ttl(Duration::ZERO)
        ),
        Some(NotStorable::NoFreshness)
    );
}

#[test]
fn targeted_field_governs_storability() {
    let pairs = [
        ("cache-control", "no-store, private"),
        ("cdn-cache-control", "max-age=600"),
    ];
    assert_eq!(storable(Method::GET, &[], 200, &pairs, &policy()), None);
    let pairs = [
        ("cache-control", "public, max-age=600"),
        ("corral-cache-control", "no-store"),
    ];
    assert_eq!(
        storable(Method::GET, &[], 200, &pairs, &policy()),
        Some(NotStorable::NoStore)
    );
}

// --- reuse -----------------------------------------------------------------

fn decide(
    response_pairs: &[(&str, &str)],
    lifetime: Lifetime,
    age: u64,
    request_pairs: &[(&str, &str)],
    policy: &FreshnessPolicy,
) -> Reuse {
    reuse(
        &directives(response_pairs),
        lifetime,
        secs(age),
        &request(request_pairs),
        policy,
    )
}

fn stale(while_revalidate: bool, if_error: bool) -> Reuse {
    Reuse::Stale {
        may_serve_while_revalidate: while_revalidate,
        may_serve_if_error: if_error,
    }
}

#[test]
fn fresh_response_is_reused_until_age_reaches_lifetime() {
    let max_age = life(60, LifetimeSource::MaxAge);
    assert_eq!(decide(&[], max_age, 59, &[], &policy()), Reuse::Fresh);
    assert_eq!(
        decide(&[], max_age, 60, &[], &policy()),
        stale(false, false)
    );
}

#[test]
fn client_no_cache_max_age_and_min_fresh_force_revalidation() {
    let max_age = life(60, LifetimeSource::MaxAge);
    for cc in ["no-cache", "max-age=10", "min-fresh=41"] {
        assert_eq!(
            decide(&[], max_age, 20, &[("cache-control", cc)], &policy()),
            stale(false, true),
            "{cc}"
        );
    }
    for cc in ["max-age=20", "min-fresh=40"] {
        assert_eq!(
            decide(&[], max_age, 20, &[("cache-control", cc)], &policy()),
            Reuse::Fresh,
            "{cc}"
        );
    }
    assert_eq!(
        decide(&[], max_age, 20, &[("pragma", "no-cache")], &policy()),
        stale(false, true)
    );
}

#[test]
fn max_stale_lets_a_stale_response_be_reused() {
    let max_age = life(60, LifetimeSource::MaxAge);
    let any = [("cache-control", "max-stale")];
    assert_eq!(decide(&[], max_age, 6000, &any, &policy()), Reuse::Fresh);
    let ten = [("cache-control", "max-stale=10")];
    assert_eq!(decide(&[], max_age, 70, &ten, &policy()), Reuse::Fresh);
    assert_eq!(
        decide(&[], max_age, 71, &ten, &policy()),
        stale(false, false)
    );
    // max-age still bounds the age, and min-fresh cannot be met by a stale response.
    let capped = [("cache-control", "max-stale, max-age=65")];
    assert_eq!(
        decide(&[], max_age, 66, &capped, &policy()),
        stale(false, false)
    );
    let min_fresh = [("cache-control", "max-stale, min-fresh=1")];
    assert_eq!(
        decide(&[], max_age, 61, &min_fresh, &policy()),
        stale(false, false)
    );
}

/// The default policy with route stale windows of `while_revalidate` and
/// `if_error` seconds.
fn with_windows(while_revalidate: u64, if_error: u64) -> FreshnessPolicy {
    FreshnessPolicy {
        stale_while_revalidate: Some(secs(while_revalidate)),
        stale_if_error: Some(secs(if_error)),
        ..policy()
    }
}

#[test]
fn must_revalidate_and_proxy_revalidate_forbid_any_stale_use() {
    let generous = with_windows(100, 100);
    let max_age = life(60, LifetimeSource::MaxAge);
    for cc in [
        "must-revalidate, stale-while-revalidate=100, stale-if-error=100",
        "proxy-revalidate",
    ] {
        let response = [("cache-control", cc)];
        assert_eq!(
            decide(
                &response,
                max_age,
                61,
                &[("cache-control", "max-stale")],
                &generous
            ),
            NEVER_STALE,
            "{cc}"
        );
        assert_eq!(
            decide(&response, max_age, 59, &[], &generous),
            Reuse::Fresh,
            "{cc}"
        );
    }
}

#[test]
fn response_no_cache_always_revalidates() {
    let generous = with_windows(100, 100);
    for cc in [
        "no-cache, max-age=60, immutable",
        "no-cache=\"x-a\", max-age=60",
    ] {
        assert_eq!(
            decide(
                &[("cache-control", cc)],
                life(60, LifetimeSource::MaxAge),
                0,
                &[],
                &generous
            ),
            NEVER_STALE,
            "{cc}"
        );
    }
}

#[test]
fn origin_stale_windows_apply_after_expiry() {
    let response = [(
        "cache-control",
        "max-age=60, stale-while-revalidate=10, stale-if-error=30",
    )];
    let max_age = life(60, LifetimeSource::MaxAge);
    assert_eq!(
        decide(&response, max_age, 69, &[], &policy()),
        stale(true, true)
    );
    assert_eq!(
        decide(&response, max_age, 70, &[], &policy()),
        stale(false, true)
    );
    assert_eq!(
        decide(&response, max_age, 90, &[], &policy()),
        stale(false, false)
    );
}

#[test]
fn route_stale_windows_apply_when_the_origin_names_none() {
    let route = with_windows(10, 300);
    let ttl = life(30, LifetimeSource::Route);
    assert_eq!(decide(&[], ttl, 35, &[], &route), stale(true, true));
    assert_eq!(decide(&[], ttl, 100, &[], &route), stale(false, true));
    // The origin's window, even a smaller one, replaces the route's.
    let response = [("cache-control", "stale-while-revalidate=2")];
    assert_eq!(decide(&response, ttl, 35, &[], &route), stale(false, true));
}

#[test]
fn s_maxage_refuses_route_windows_and_max_stale_but_not_origin_windows() {
    let route = with_windows(10, 300);
    let s_maxage = life(60, LifetimeSource::SMaxAge);
    let response = [("cache-control", "s-maxage=60")];
    assert_eq!(
        decide(
            &response,
            s_maxage,
            61,
            &[("cache-control", "max-stale")],
            &route
        ),
        NEVER_STALE
    );
    let response = [("cache-control", "s-maxage=60, stale-while-revalidate=30")];
    assert_eq!(
        decide(&response, s_maxage, 61, &[], &route),
        stale(true, false)
    );
}

#[test]
fn client_constraints_block_stale_while_revalidate_not_stale_if_error() {
    let response = [(
        "cache-control",
        "max-age=60, stale-while-revalidate=30, stale-if-error=30",
    )];
    let max_age = life(60, LifetimeSource::MaxAge);
    for cc in ["no-cache", "max-age=60", "min-fresh=5", "max-stale=2"] {
        assert_eq!(
            decide(&response, max_age, 65, &[("cache-control", cc)], &policy()),
            stale(false, true),
            "{cc}"
        );
    }
}

#[test]
fn immutable_fresh_response_ignores_client_revalidation() {
    let response = [("cache-control", "max-age=60, immutable")];
    let max_age = life(60, LifetimeSource::MaxAge);
    let reload = [("cache-control", "no-cache, max-age=0")];
    assert_eq!(
        decide(&response, max_age, 30, &reload, &policy()),
        Reuse::Fresh
    );
    assert_eq!(
        decide(&response, max_age, 60, &reload, &policy()),
        stale(false, false)
    );
}

// --- validators ------------------------------------------------------------

#[test]
fn validator_is_an_etag_or_a_valid_last_modified() {
    let lm = date(0);
    assert!(has_validator(&headers(&[("etag", "\"v1\"")])));
    assert!(has_validator(&headers(&[("etag", "W/\"v1\"")])));
    assert!(has_validator(&headers(&[("last-modified", &lm)])));
    assert!(!has_validator(&headers(&[("last-modified", "yesterday")])));
    assert!(!has_validator(&headers(&[("etag", "v1")])));
    assert!(!has_validator(&HeaderMap::new()));
}

#[test]
fn conditional_request_carries_etag_and_last_modified_verbatim() {
    let lm = date(0);
    let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", &lm)]);
    let conditional = conditional_headers(&stored);
    assert_eq!(conditional.len(), 2);
    assert_eq!(conditional[header::IF_NONE_MATCH], "W/\"v1\"");
    assert_eq!(conditional[header::IF_MODIFIED_SINCE], lm.as_str());
    let garbage = headers(&[("etag", "v1"), ("last-modified", "soon")]);
    assert!(conditional_headers(&garbage).is_empty());
}

fn not_modified(request_pairs: &[(&str, &str)], stored_pairs: &[(&str, &str)]) -> bool {
    client_not_modified(
        &headers(request_pairs),
        StatusCode::OK,
        &headers(stored_pairs),
        wall(500),
    )
}

#[test]
fn if_none_match_uses_weak_comparison_over_a_list() {
    let stored = [("etag", "\"v2\"")];
    assert!(not_modified(
        &[("if-none-match", "\"v1\", W/\"v2\"")],
        &stored
    ));
    assert!(not_modified(
        &[("if-none-match", "\"v0\""), ("if-none-match", "\"v2\"")],
        &stored
    ));
    assert!(!not_modified(&[("if-none-match", "\"v1\"")], &stored));
    assert!(not_modified(
        &[("if-none-match", "\"v2\"")],
        &[("etag", "W/\"v2\"")]
    ));
    // Commas may sit inside an opaque tag.
    assert!(not_modified(
        &[("if-none-match", "\"a,b\"")],
        &[("etag", "\"a,b\"")]
    ));
    // A malformed list matches nothing.
    assert!(!not_modified(&[("if-none-match", "v2, \"v2\"")], &stored));
    assert!(!not_modified(&[("if-none-match", "\"v2\"")], &[]));
}

#[test]
fn if_none_match_star_matches_any_stored_response() {
    assert!(not_modified(&[("if-none-match", "*")], &[]));
    assert!(!client_not_modified(
        &headers(&[("if-none-match", "*")]),
        StatusCode::NOT_FOUND,
        &HeaderMap::new(),
        wall(0)
    ));
}

#[test]
fn if_none_match_takes_precedence_over_if_modified_since() {
    let (lm, later) = (date(0), date(100));
    let stored = [("etag", "\"v2\""), ("last-modified", lm.as_str())];
    let request = [
        ("if-none-match", "\"v1\""),
        ("if-modified-since", later.as_str()),
    ];
    assert!(!not_modified(&request, &stored));
}

fn modified_since(since: &str, stored: &[(&str, &str)]) -> bool {
    not_modified(&[("if-modified-since", since)], stored)
}

#[test]
fn if_modified_since_compares_last_modified_then_date_then_receipt() {
    let (t0, t100, t200, t600) = (date(0), date(100), date(200), date(600));
    let with_lm = [("last-modified", t100.as_str()), ("date", t200.as_str())];
    assert!(modified_since(&t100, &with_lm));
    assert!(!modified_since(&t0, &with_lm));
    let date_only = [("date", t200.as_str())];
    assert!(modified_since(&t200, &date_only));
    assert!(!modified_since(&t100, &date_only));
    // Neither: the time it was received, wall(500).
    assert!(modified_since(&t600, &[]));
    assert!(!modified_since(&t200, &[]));
}

#[test]
fn invalid_or_repeated_if_modified_since_is_ignored() {
    let (lm, later) = (date(0), date(100));
    let stored = [("last-modified", lm.as_str())];
    assert!(!not_modified(
        &[("if-modified-since", "yesterday")],
        &stored
    ));
    assert!(!not_modified(
        &[
            ("if-modified-since", later.as_str()),
            ("if-modified-since", later.as_str())
        ],
        &stored
    ));
}

#[test]
fn conditionals_are_evaluated_only_against_a_stored_200() {
    let stored = headers(&[("etag", "\"v1\"")]);
    let request = headers(&[("if-none-match", "\"v1\"")]);
    assert!(client_not_modified(
        &request,
        StatusCode::OK,
        &stored,
        wall(0)
    ));
    for status in [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::NOT_FOUND,
        StatusCode::NO_CONTENT,
    ] {
        assert!(
            !client_not_modified(&request, status, &stored, wall(0)),
            "{status}"
        );
    }
}

#[test]
fn not_modified_response_carries_cache_metadata_only() {
    let d = date(0);
    let stored = headers(&[
        ("etag", "\"v1\""),
        ("last-modified", &d),
        ("date", &d),
        ("cache-control", "max-age=60"),
        ("vary", "accept-encoding"),
        ("content-type", "application/json"),
        ("content-length", "120"),
    ]);
    let sent = not_modified_response_headers(&stored);
    let names: Vec<&str> = sent.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["cache-control", "date", "etag", "vary"]);
    let without_etag = headers(&[("last-modified", &d)]);
    assert!(not_modified_response_headers(&without_etag).contains_key(header::LAST_MODIFIED));
}

#[test]
fn not_modified_updates_only_the_matching_stored_response() {
    let (t0, t1) = (date(0), date(1));
    let strong = headers(&[("etag", "\"v1\"")]);
    assert!(not_modified_applies(
        &strong,
        &headers(&[("etag", "\"v1\"")])
    ));
    assert!(!not_modified_applies(
        &strong,
        &headers(&[("etag", "\"v2\"")])
    ));
    // A strong 304 validator never matches a weak stored one.
    let weak = headers(&[("etag", "W/\"v1\"")]);
    assert!(!not_modified_applies(
        &weak,
        &headers(&[("etag", "\"v1\"")])
    ));
    assert!(not_modified_applies(
        &weak,
        &headers(&[("etag", "W/\"v1\"")])
    ));
    assert!(not_modified_applies(
        &strong,
        &headers(&[("etag", "W/\"v1\"")])
    ));
    // Last-Modified when there is no ETag in the 304.
    let dated = headers(&[("last-modified", &t0)]);
    assert!(not_modified_applies(
        &dated,
        &headers(&[("last-modified", &t0)])
    ));
    assert!(!not_modified_applies(
        &dated,
        &headers(&[("last-modified", &t1)])
    ));
    // No validator at all: it answers the request made from the stored one
    // (issue 12: an origin validating by date may send no validator).
    assert!(not_modified_applies(&strong, &HeaderMap::new()));
    assert!(not_modified_applies(&dated, &HeaderMap::new()));
    assert!(not_modified_applies(&HeaderMap::new(), &HeaderMap::new()));
}

#[test]
fn freshening_replaces_headers_but_keeps_framing_and_validator() {
    let stored = headers(&[
        ("etag", "\"v1\""),
        ("content-length", "120"),
        ("content-encoding", "gzip"),
        ("content-type", "application/json"),
        ("cache-control", "max-age=60"),
        ("x-version", "old"),
        ("x-version", "older"),
        ("x-kept", "yes"),
    ]);
    let fresh = headers(&[
        ("etag", "W/\"v1\""),
        ("content-length", "0"),
        ("content-encoding", "br"),
        ("cache-control", "max-age=600"),
        ("x-version", "new"),
    ]);
    let merged = freshen_headers(stored.clone(), &fresh);
    assert_eq!(merged[header::ETAG], "\"v1\"");
    assert_eq!(merged[header::CONTENT_LENGTH], "120");
    assert_eq!(merged[header::CONTENT_ENCODING], "gzip");
    assert_eq!(merged[header::CACHE_CONTROL], "max-age=600");
    let versions: Vec<_> = merged.get_all("x-version").iter().collect();
    assert_eq!(versions, ["new"]);
    assert_eq!(merged["x-kept"], "yes");
    assert_eq!(merged[header::CONTENT_TYPE], "application/json");
}

#[test]
fn freshening_takes_date_and_age_from_the_304() {
    let (old, new) = (date(0), date(100));
    let stored = headers(&[("date", &old), ("age", "50")]);
    let merged = freshen_headers(stored.clone(), &headers(&[("date", &new)]));
    assert_eq!(merged[header::DATE], new.as_str());
    assert!(!merged.contains_key(header::AGE));
    let merged = freshen_headers(stored.clone(), &HeaderMap::new());
    assert!(!merged.contains_key(header::DATE));
}

#[test]
fn freshening_never_copies_set_cookie_or_hop_by_hop_fields() {
    let stored = headers(&[("content-type", "text/plain")]);
    let fresh = headers(&[
        ("set-cookie", "id=1"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("x-end-to-end", "1"),
    ]);
    let merged = freshen_headers(stored.clone(), &fresh);
    let mut names: Vec<&str> = merged.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-type", "x-end-to-end"]);
}

#[test]
fn only_credential_free_get_and_head_are_cacheable() {
    let none = HeaderMap::new();
    assert_eq!(request_pass_reason(&Method::GET, &none), None);
    assert_eq!(request_pass_reason(&Method::HEAD, &none), None);
    assert_eq!(
        request_pass_reason(&Method::POST, &none),
        Some(PassReason::Method)
    );
    let auth = headers(&[("authorization", "Bearer x")]);
    assert_eq!(
        request_pass_reason(&Method::GET, &auth),
        Some(PassReason::Credentials)
    );
    let cookie = headers(&[("cookie", "session=1")]);
    assert_eq!(
        request_pass_reason(&Method::GET, &cookie),
        Some(PassReason::Credentials)
    );
}

fn shared(
    pairs: &[(&'static str, &'static str)],
    not_storable: Option<NotStorable>,
) -> Shareability {
    let map = headers(pairs);
    shareability(&map, &ResponseDirectives::from_headers(&map), not_storable)
}

#[test]
fn private_no_store_set_cookie_and_vary_star_are_never_shared() {
    for pairs in [
        &[("cache-control", "private")][..],
        &[("cache-control", "max-age=60, no-store")][..],
        &[
            ("cache-control", "public"),
            ("cache-control", "Private=\"x\""),
        ][..],
        &[
            ("cdn-cache-control", "no-store"),
            ("cache-control", "public"),
        ][..],
        &[("set-cookie", "id=1")][..],
        &[("vary", "accept, *")][..],
    ] {
        assert_eq!(shared(pairs, None), Shareability::Private, "{pairs:?}");
    }
}

#[test]
fn storable_answers_are_stored_others_only_shared() {
    let plain = [("cache-control", "public, max-age=\"30\"")];
    assert_eq!(shared(&plain, None), Shareability::Store);
    assert_eq!(
        shared(&plain, Some(NotStorable::Status)),
        Shareability::ShareOnly
    );
    // no-cache is revalidated before reuse, but handed to the clients waiting now.
    assert_eq!(
        shared(&[("cache-control", "no-cache")], None),
        Shareability::Store
    );
    // A targeted field decides: Cache-Control's no-store is for browsers.
    let cdn = [
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=60"),
    ];
    assert_eq!(shared(&cdn, None), Shareability::Store);
}
