//! What RFC 9111 (with RFC 5861 and RFC 9213) lets a shared cache do with a
//! response: its freshness lifetime and age, whether it may be stored, shared
//! and reused, and how it is revalidated, as pure functions over parsed
//! directives ([`crate::http::directives`]).
//!
//! Nothing here reads a clock or does I/O: every instant is an argument. Local
//! instants are [`tokio::time::Instant`]s, so paused-time tests are exact; wall
//! clock values ([`SystemTime`]) are only compared with the HTTP dates in
//! `Date`, `Expires`, `Last-Modified` and `If-Modified-Since`.
//!
//! When a targeted field governs a response, `Cache-Control` **and `Expires`**
//! are ignored for everything: freshness, `no-store`, `private`, stale windows.
//! That is the RFC's intent (`CDN-Cache-Control: max-age=600` with
//! `Cache-Control: no-store` means "a CDN may store this, browsers may not").
//!
//! # Freshness lifetime precedence
//!
//! [`freshness_lifetime`] picks the first rule that applies:
//!
//! | # | rule | applies to |
//! |---|------|------------|
//! | 1 | `override_origin`: the route's `route_ttl` | 200 |
//! |   | `override_origin`: the route's `negative_ttl`, when set | 404, 410 |
//! | 2 | `s-maxage` | any status |
//! | 3 | `max-age` | any status |
//! | 4 | `Expires` − `Date` (not with a targeted field) | any status |
//! | 5 | heuristic: 10% of `Date` − `Last-Modified`, at most `heuristic_max`, when `heuristic` is on | heuristically cacheable statuses, or `public` |
//! | 6 | the route's `route_ttl` | 200 |
//! |   | the route's `negative_ttl`, when set | 404, 410 |
//! | 7 | zero (stale on arrival) | everything else |
//!
//! So the route's ttl is the *default* for a 200 that says nothing about its
//! freshness, and wins over the origin only when the route says
//! `override_origin`. The heuristic, when a route enables it, comes before the
//! route default: enabling it on a route means "estimate from `Last-Modified`
//! where you can". Overriding never makes an unstorable response storable
//! ([`not_storable_reason`] is separate).
//!
//! A list-valued `Age` (`Age: 5, 7`, or several `Age` lines) counts as its
//! first member; an invalid one (`-5`, `1.5`, `5s`, text, empty) is ignored,
//! as if the response had no `Age` (RFC 9111 §5.1, [`age_value`]). Several
//! differing `Expires` lines, or an invalid one (e.g. `0`), mean "already
//! expired" (RFC 9111 §5.3). Every HTTP-date (`Date`, `Expires`,
//! `Last-Modified`, `If-Modified-Since`) is read by
//! [`crate::http::date::parse_http_date`]: any of the three forms, in any
//! case.
//!
//! # Which statuses are stored
//!
//! [`not_storable_reason`] stores a final status other than 206 and 304 when
//! something gives it freshness (RFC 9111 §3):
//!
//! - 2xx and 3xx: explicit freshness, a heuristically cacheable status,
//!   `public`, or the route's `ttl` for a 200;
//! - 404 and 410: explicit freshness, or the route's `negative_ttl`;
//! - any other 4xx or 5xx: explicit freshness only (`s-maxage`, `max-age`,
//!   or `Expires` when no targeted field governs), stored for as long as it
//!   says.
//!
//! 1xx are not final, and codes outside 100–599 are not HTTP status codes
//! (RFC 9110 §15): neither is stored.
//!
//! # Serving stale
//!
//! [`reuse`] lets a stale response be served only when someone allowed it: the
//! origin (`stale-while-revalidate`, `stale-if-error`), the route (its default
//! windows, used when the origin names none), or the client (`max-stale`).
//! `must-revalidate`, `proxy-revalidate` and `no-cache` forbid all of these.
//! `s-maxage` carries `proxy-revalidate` for a shared cache (RFC 9111
//! §5.2.2.10), so when the lifetime came from `s-maxage` the route defaults and
//! `max-stale` are refused, but stale windows the origin sent on the same
//! response are honoured: `s-maxage=60, stale-while-revalidate=30` is the
//! origin explicitly permitting stale use (RFC 9111 §4.2.4, RFC 5861).

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::config::FreshnessPolicy;
use crate::http::conditional::{entity_tag_list, stored_etag};
use crate::http::date::{header_date, parse_http_date};
use crate::http::directives::{
    CDN_CACHE_CONTROL, DELTA_SECONDS_MAX, MaxStale, RequestDirectives, ResponseDirectives,
    delta_seconds, join_lines, list_members_of,
};
use crate::http::vary_names;

/// Share of `Date` − `Last-Modified` used as a heuristic lifetime (RFC 9111
/// §4.2.2 suggests 10%).
const HEURISTIC_FRACTION: u32 = 10;

// ---------------------------------------------------------------------------
// Freshness lifetime
// ---------------------------------------------------------------------------

/// The route's own ttl for `status`, if it has one: `route_ttl` for 200,
/// `negative_ttl` for 404 and 410.
fn route_lifetime(policy: &FreshnessPolicy, status: StatusCode) -> Option<Lifetime> {
    match status {
        StatusCode::OK => Some(Lifetime::new(policy.route_ttl, LifetimeSource::Route)),
        StatusCode::NOT_FOUND | StatusCode::GONE => policy
            .negative_ttl
            .map(|ttl| Lifetime::new(ttl, LifetimeSource::NegativeTtl)),
        _ => None,
    }
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    /// The route's ttl for a 200 (as default or override).
    Route,
    /// The route's negative ttl for a 404 or 410 (as default or override).
    NegativeTtl,
    /// The origin's `s-maxage` (which also means `proxy-revalidate`).
    SMaxAge,
    /// The origin's `max-age`.
    MaxAge,
    /// The origin's `Expires` minus its `Date`.
    Expires,
    /// 10% of `Date` − `Last-Modified`, capped by the policy.
    Heuristic,
    /// No rule gave it any freshness: stale on arrival.
    None,
}

/// A response's freshness lifetime and which rule produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// How long after generation the response stays fresh; at most
    /// [`DELTA_SECONDS_MAX`].
    pub duration: Duration,
    /// The rule that produced `duration`.
    pub source: LifetimeSource,
}

impl Lifetime {
    /// A lifetime of `duration` (saturating at [`DELTA_SECONDS_MAX`]) from `source`.
    pub fn new(duration: Duration, source: LifetimeSource) -> Lifetime {
        Lifetime {
            duration: duration.min(DELTA_SECONDS_MAX),
            source,
        }
    }
}

/// The freshness lifetime a shared cache gives a response (RFC 9111 §4.2.1,
/// §4.2.2), following the precedence table in the module docs.
///
/// `received_at` is the wall-clock time the response arrived; it stands in for
/// a missing or invalid `Date` (RFC 9110 §6.6.1).
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    received_at: SystemTime,
    policy: &FreshnessPolicy,
) -> Lifetime {
    if policy.override_origin
        && let Some(lifetime) = route_lifetime(policy, status)
    {
        return lifetime;
    }
    if let Some(s_maxage) = directives.s_maxage {
        return Lifetime::new(s_maxage, LifetimeSource::SMaxAge);
    }
    if let Some(max_age) = directives.max_age {
        return Lifetime::new(max_age, LifetimeSource::MaxAge);
    }
    let date = header_date(headers, &header::DATE).unwrap_or(received_at);
    if !directives.source.is_targeted() {
        match expires(headers) {
            Expires::Absent => {}
            Expires::Expired => return Lifetime::new(Duration::ZERO, LifetimeSource::Expires),
            Expires::At(at) => {
                let lifetime = at.duration_since(date).unwrap_or(Duration::ZERO);
                return Lifetime::new(lifetime, LifetimeSource::Expires);
            }
        }
    }
    if policy.heuristic
        && (is_heuristically_cacheable(status) || directives.public)
        && let Some(last_modified) = header_date(headers, &header::LAST_MODIFIED)
        && let Ok(since) = date.duration_since(last_modified)
    {
        let estimate = (since / HEURISTIC_FRACTION).min(policy.heuristic_max);
        return Lifetime::new(estimate, LifetimeSource::Heuristic);
    }
    route_lifetime(policy, status)
        .unwrap_or_else(|| Lifetime::new(Duration::ZERO, LifetimeSource::None))
}

/// Whether RFC 9110 §15.1 defines `status` as heuristically cacheable: 200,
/// 203, 204, 206, 300, 301, 308, 404, 405, 410, 414 and 501.
pub fn is_heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

enum Expires {
    Absent,
    /// Invalid (e.g. `0`) or several differing values: already expired.
    Expired,
    At(SystemTime),
}

fn expires(headers: &HeaderMap) -> Expires {
    let mut found = Expires::Absent;
    for value in headers.get_all(header::EXPIRES) {
        let parsed = value.to_str().ok().and_then(parse_http_date);
        found = match (found, parsed) {
            (_, None) | (Expires::Expired, _) => return Expires::Expired,
            (Expires::Absent, Some(at)) => Expires::At(at),
            (Expires::At(seen), Some(at)) if seen == at => Expires::At(seen),
            (Expires::At(_), Some(_)) => return Expires::Expired,
        };
    }
    found
}

// ---------------------------------------------------------------------------
// Age
// ---------------------------------------------------------------------------

/// `apparent_age = max(0, response_time − date_value)` (RFC 9111 §4.2.3), on
/// the wall clock: how long ago the origin dated the response when it arrived
/// at `received_at`. Zero without a `Date`, or when `Date` is in the future.
pub fn apparent_age(date: Option<SystemTime>, received_at: SystemTime) -> Duration {
    date.and_then(|date| received_at.duration_since(date).ok())
        .unwrap_or(Duration::ZERO)
        .min(DELTA_SECONDS_MAX)
}

/// `corrected_age_value = age_value + (response_time − request_time)` (RFC
/// 9111 §4.2.3): the upstream `Age` plus the round trip, so the time the
/// response spent in transit counts against it. Saturates at
/// [`DELTA_SECONDS_MAX`].
pub fn corrected_age_value(
    age_value: Duration,
    request_time: Instant,
    response_time: Instant,
) -> Duration {
    let response_delay = response_time.saturating_duration_since(request_time);
    age_value
        .saturating_add(response_delay)
        .min(DELTA_SECONDS_MAX)
}

/// `corrected_initial_age = max(apparent_age, corrected_age_value)` (RFC 9111
/// §4.2.3) for a response whose request left at `request_time` and which
/// arrived at `response_time` (local clock) / `received_at` (wall clock).
///
/// `age_value` is the response's `Age` as [`age_value`] reads it: the first
/// member of a list, and zero (as if absent) when that is not one
/// delta-seconds value (RFC 9111 §5.1).
pub fn corrected_initial_age(
    headers: &HeaderMap,
    request_time: Instant,
    response_time: Instant,
    received_at: SystemTime,
) -> Duration {
    let age_value = age_value(headers).unwrap_or(Duration::ZERO);
    let apparent = apparent_age(header_date(headers, &header::DATE), received_at);
    apparent.max(corrected_age_value(age_value, request_time, response_time))
}

/// The `Age` a response carries (RFC 9111 §5.1), or `None` when it has none
/// or it is invalid, which a cache should ignore as if absent.
///
/// `Age` is a singleton, but a list-valued one (`Age: 5, 7`, or two `Age`
/// lines) uses its first member, discarding the rest; empty list members are
/// skipped (RFC 9110 §5.6.1). That member must be delta-seconds (`1*DIGIT`,
/// saturating at [`DELTA_SECONDS_MAX`]): a sign, a fraction, a unit (`5s`)
/// or text make the field invalid, and so does a first line that is not
/// visible ASCII. Later members are never consulted for an invalid first one.
pub fn age_value(headers: &HeaderMap) -> Option<Duration> {
    for line in headers.get_all(header::AGE) {
        let line = line.to_str().ok()?;
        if let Some(first) = line.split(',').map(str::trim).find(|m| !m.is_empty()) {
            return delta_seconds(first);
        }
    }
    None
}

/// `current_age = corrected_initial_age + (now − response_time)` (RFC 9111
/// §4.2.3). Saturates at [`DELTA_SECONDS_MAX`]; never negative.
pub fn current_age(
    corrected_initial_age: Duration,
    response_time: Instant,
    now: Instant,
) -> Duration {
    corrected_initial_age
        .saturating_add(now.saturating_duration_since(response_time))
        .min(DELTA_SECONDS_MAX)
}

/// The instant at which the response stops being fresh: when its current age
/// reaches `lifetime`. At or before `response_time` when the response arrived
/// already stale; `response_time` if the sum cannot be represented.
pub fn fresh_until(
    response_time: Instant,
    lifetime: Duration,
    corrected_initial_age: Duration,
) -> Instant {
    response_time
        .checked_add(lifetime.saturating_sub(corrected_initial_age))
        .unwrap_or(response_time)
}

// ---------------------------------------------------------------------------
// Storability
// ---------------------------------------------------------------------------

/// Why a response must not be stored. Each is a distinct, bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// The request method is not GET (a HEAD is answered from a stored GET).
    Method,
    /// The status is not one corral stores: non-final (1xx), 206, 304, a
    /// code outside 100–599, or a 4xx/5xx without explicit freshness (for
    /// 404/410: without it and without the route's `negative_ttl`).
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private` (bare or with field names).
    Private,
    /// The request carries `Authorization` and the response lacks `public`,
    /// `must-revalidate` and `s-maxage`.
    Authorization,
    /// The response sets a cookie (corral policy).
    SetCookie,
    /// The response varies on `*` (corral policy).
    VaryStar,
    /// Nothing makes the response cacheable: no explicit freshness, not
    /// heuristically cacheable, not `public`, and no route ttl for its status.
    NoFreshness,
}

impl NotStorable {
    /// Stable lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

/// Why a shared cache must not store this response to this request (RFC 9111
/// §3, §3.5), or `None` when it may. Stricter than the RFC where corral's
/// policy is: only GET; never `Set-Cookie` or `Vary: *`; never 206 (corral
/// does not combine ranges); a 4xx or 5xx only with explicit freshness
/// (`s-maxage`, `max-age`, or `Expires` when no targeted field governs), or
/// as a 404/410 with the route's `negative_ttl` (see the module docs).
///
/// `response` must be [`ResponseDirectives::from_headers`] of
/// `response_headers`, so a targeted field governs `no-store` and `private`.
/// Run it again on headers merged from a 304 ([`freshen_headers`]).
pub fn not_storable_reason(
    method: &Method,
    request: &RequestFacts,
    status: StatusCode,
    response_headers: &HeaderMap,
    response: &ResponseDirectives,
    policy: &FreshnessPolicy,
) -> Option<NotStorable> {
    if method != Method::GET {
        return Some(NotStorable::Method);
    }
    let explicit = response.has_explicit_freshness(response_headers);
    if !is_storable_status(status, explicit, policy) {
        return Some(NotStorable::Status);
    }
    if request.no_store {
        return Some(NotStorable::NoStore);
    }
    let never = never_shared(response_headers, response);
    if let Some(reason @ (NotStorable::NoStore | NotStorable::Private)) = never {
        return Some(reason);
    }
    if request.authorization
        && !(response.public || response.must_revalidate || response.s_maxage.is_some())
    {
        return Some(NotStorable::Authorization);
    }
    if never.is_some() {
        return never;
    }
    let route_ttl = match status {
        StatusCode::OK => !policy.route_ttl.is_zero(),
        StatusCode::NOT_FOUND | StatusCode::GONE => policy.negative_ttl.is_some(),
        _ => false,
    };
    let cacheable = explicit || is_heuristically_cacheable(status) || response.public || route_ttl;
    if !cacheable {
        return Some(NotStorable::NoFreshness);
    }
    None
}

/// Whether corral stores responses with `status` at all (RFC 9111 §3: a final
/// status it understands), given whether the response carries `explicit`
/// freshness in its governing field. The other conditions follow in
/// [`not_storable_reason`].
fn is_storable_status(status: StatusCode, explicit: bool, policy: &FreshnessPolicy) -> bool {
    match status.as_u16() {
        206 | 304 => false,
        200..=399 => true,
        404 | 410 => explicit || policy.negative_ttl.is_some(),
        400..=599 => explicit,
        // 1xx are interim; codes outside 100–599 are not HTTP's (RFC 9110 §15).
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Reuse
// ---------------------------------------------------------------------------

/// Whether a stored response may answer a request without the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it as is: fresh and acceptable to the client, or stale within
    /// the client's `max-stale`.
    Fresh,
    /// It must not be served as is; the origin has to be asked (validated or
    /// refetched). This also covers fresh responses the client or a
    /// `no-cache` directive demands be revalidated.
    Stale {
        /// It may be served now while one background request refreshes it.
        may_serve_while_revalidate: bool,
        /// It may be served if the origin fails (error, 5xx, timeout).
        may_serve_if_error: bool,
    },
}

/// Decides whether a stored response may be reused for a request (RFC 9111
/// §4.2, §4.2.4, §5.2; RFC 5861; RFC 8246), given its `lifetime` and
/// `current_age`. See the module docs on serving stale.
///
/// - Response `no-cache`: always revalidate, never stale.
/// - Fresh and `immutable`: [`Reuse::Fresh`], whatever the client asks.
/// - Fresh: the client's `no-cache`, `max-age` (age above it) and `min-fresh`
///   (less left than it) force revalidation; the fresh response may still be
///   served if the origin fails, never while revalidating.
/// - Stale: [`Reuse::Fresh`] within the client's `max-stale` (and `max-age`,
///   and with no `min-fresh` or `no-cache`); otherwise stale-while-revalidate
///   applies within its window and when the client's constraints allow it,
///   and stale-if-error within its window whatever the client's freshness
///   preferences (RFC 5861 §4: "regardless of other freshness information").
/// - Windows are half-open: a window of N serves staleness in `[0, N)`.
pub fn reuse(
    response: &ResponseDirectives,
    lifetime: Lifetime,
    current_age: Duration,
    request: &RequestDirectives,
    policy: &FreshnessPolicy,
) -> Reuse {
    let never_stale = Reuse::Stale {
        may_serve_while_revalidate: false,
        may_serve_if_error: false,
    };
    if response.no_cache.is_some() {
        return never_stale;
    }
    let age = current_age;
    let age_ok = request.max_age.is_none_or(|max| age <= max);
    if age < lifetime.duration {
        if response.immutable {
            return Reuse::Fresh;
        }
        let left = lifetime.duration - age;
        let min_fresh_ok = request.min_fresh.is_none_or(|min| left >= min);
        if !request.no_cache && age_ok && min_fresh_ok {
            return Reuse::Fresh;
        }
        return Reuse::Stale {
            may_serve_while_revalidate: false,
            may_serve_if_error: true,
        };
    }

    if response.must_revalidate || response.proxy_revalidate {
        return never_stale;
    }
    let staleness = age - lifetime.duration;
    // s-maxage carries proxy-revalidate: only the origin's own windows count.
    let implied_revalidate = lifetime.source == LifetimeSource::SMaxAge;
    let client_constraints_ok =
        !request.no_cache && age_ok && request.min_fresh.is_none_or(|min| min.is_zero());
    let within_max_stale = match request.max_stale {
        Some(MaxStale::Any) => true,
        Some(MaxStale::Limit(limit)) => staleness <= limit,
        None => false,
    };
    if !implied_revalidate && client_constraints_ok && within_max_stale {
        return Reuse::Fresh;
    }
    let window = |origin: Option<Duration>, route: Option<Duration>| {
        origin.or(if implied_revalidate { None } else { route })
    };
    let within = |window: Option<Duration>| window.is_some_and(|w| staleness < w);
    let client_accepts_staleness = match request.max_stale {
        Some(MaxStale::Limit(limit)) => staleness <= limit,
        _ => true,
    };
    Reuse::Stale {
        may_serve_while_revalidate: client_constraints_ok
            && client_accepts_staleness
            && within(window(
                response.stale_while_revalidate,
                policy.stale_while_revalidate,
            )),
        may_serve_if_error: within(window(response.stale_if_error, policy.stale_if_error)),
    }
}

// ---------------------------------------------------------------------------
// Validators, conditional requests and 304 freshening
// ---------------------------------------------------------------------------

/// Whether a stored response can be revalidated: it has a valid `ETag` or a
/// `Last-Modified` that parses as an HTTP-date.
pub fn has_validator(stored: &HeaderMap) -> bool {
    stored_etag(stored).is_some() || header_date(stored, &header::LAST_MODIFIED).is_some()
}

/// The precondition headers for revalidating a stored response (RFC 9111
/// §4.3.1): `If-None-Match` with its `ETag` and `If-Modified-Since` with its
/// `Last-Modified`, each copied verbatim and only when valid. Empty when the
/// response has no validator.
pub fn conditional_headers(stored: &HeaderMap) -> HeaderMap {
    let mut conditional = HeaderMap::new();
    if stored_etag(stored).is_some()
        && let Some(etag) = stored.get(header::ETAG)
    {
        conditional.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if header_date(stored, &header::LAST_MODIFIED).is_some()
        && let Some(last_modified) = stored.get(header::LAST_MODIFIED)
    {
        conditional.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
    }
    conditional
}

/// Whether a client's conditional GET or HEAD is answered with 304 from a
/// stored response (RFC 9111 §4.3.2, RFC 9110 §13.1.1–13.1.3, §13.2.2).
///
/// Only a stored 200 is evaluated. `If-None-Match`, when present, decides
/// alone: `*` matches, otherwise any listed entity-tag that weakly matches the
/// stored `ETag` does; a malformed list matches nothing. Otherwise a single
/// valid `If-Modified-Since` matches when the stored `Last-Modified` (else its
/// `Date`, else `received_at`) is not after it.
pub fn client_not_modified(
    request: &HeaderMap,
    stored_status: StatusCode,
    stored: &HeaderMap,
    received_at: SystemTime,
) -> bool {
    if stored_status != StatusCode::OK {
        return false;
    }
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(joined) = join_lines(request, &header::IF_NONE_MATCH) else {
            return false;
        };
        if joined.trim() == "*" {
            return true;
        }
        let Some(stored_tag) = stored_etag(stored) else {
            return false;
        };
        return entity_tag_list(&joined)
            .is_some_and(|tags| tags.iter().any(|tag| tag.weak_eq(&stored_tag)));
    }
    let mut lines = request.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return false;
    };
    let Some(since) = line.to_str().ok().and_then(parse_http_date) else {
        return false;
    };
    let modified = header_date(stored, &header::LAST_MODIFIED)
        .or_else(|| header_date(stored, &header::DATE))
        .unwrap_or(received_at);
    modified <= since
}

/// The headers of a 304 sent to a client from a stored response (RFC 9110
/// §15.4.5): `Cache-Control`, `CDN-Cache-Control`, `Content-Location`,
/// `Date`, `ETag`, `Expires` and `Vary` as stored, plus `Last-Modified` when
/// there is no `ETag`.
pub fn not_modified_response_headers(stored: &HeaderMap) -> HeaderMap {
    let mut names = vec![
        header::CACHE_CONTROL,
        CDN_CACHE_CONTROL.clone(),
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
    ];
    if !stored.contains_key(header::ETAG) {
        names.push(header::LAST_MODIFIED);
    }
    let mut out = HeaderMap::new();
    for name in names {
        for value in stored.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Whether a 304 from the origin identifies the stored response for update
/// (RFC 9111 §4.3.4, for a cache holding one response per key):
///
/// - a strong `ETag` in the 304 must equal the stored strong `ETag`;
/// - a weak one must weakly match the stored `ETag`;
/// - without an `ETag`, its `Last-Modified` must equal the stored one;
/// - with no validator at all, it answers the conditional request it was
///   sent for, which named `stored`'s validators: it matches. RFC 9110
///   §15.4.5 requires a 304 to repeat an `ETag` but not `Last-Modified`, so
///   an origin validating by date may send neither, and refetching would
///   cost a second origin request per revalidation.
///
/// When it does not match, the 304 must not update the stored response; the
/// caller should fetch the response again unconditionally.
pub fn not_modified_applies(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let stored_tag = stored_etag(stored);
    if let Some(new_tag) = stored_etag(not_modified) {
        return stored_tag.is_some_and(|stored_tag| {
            if new_tag.weak {
                new_tag.weak_eq(&stored_tag)
            } else {
                new_tag.strong_eq(&stored_tag)
            }
        });
    }
    let new_modified = header_date(not_modified, &header::LAST_MODIFIED);
    let stored_modified = header_date(stored, &header::LAST_MODIFIED);
    match new_modified {
        Some(new_modified) => stored_modified == Some(new_modified),
        None => true,
    }
}

/// Header fields a 304 never changes in a stored response: framing and
/// content metadata the stored body depends on, its validator, hop-by-hop
/// fields, and `Set-Cookie` (never shared by corral).
const NOT_FRESHENED: [HeaderName; 14] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::ETAG,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-authentication-info"),
    header::SET_COOKIE,
];

/// The stored response's headers updated by a 304 (RFC 9111 §3.2, §4.3.4):
/// every field the 304 carries replaces all stored lines of that field,
/// except `Content-Length`, `Content-Encoding`, `Content-Range`, `ETag`,
/// hop-by-hop fields (and those the 304's `Connection` names) and
/// `Set-Cookie`. `Date` and `Age` always come from the 304 (dropped when it
/// has none), so age is computed afresh from the 304's arrival. The body is
/// untouched; call [`not_modified_applies`] first, and check storability of
/// the result again.
pub fn freshen_headers(stored: HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let nominated: Vec<HeaderName> = list_members_of(not_modified, &header::CONNECTION)
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    let mut merged = stored;
    merged.remove(header::DATE);
    merged.remove(header::AGE);
    for name in not_modified.keys() {
        if NOT_FRESHENED.contains(name) || nominated.contains(name) {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

// ---------------------------------------------------------------------------
// Shareability
// ---------------------------------------------------------------------------

/// Why a request or its answer bypasses the cache; each is a distinct,
/// bounded label for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// No route matched the path.
    NoRoute,
    /// The route says `cache = false`.
    RouteBypass,
    /// The method is neither GET nor HEAD.
    Method,
    /// The request carries `Authorization` or `Cookie`.
    Credentials,
    /// The key recently answered with something unshareable (hit-for-pass).
    HitForPass,
    /// The leader's answer could not be shared with this request.
    Unshareable,
}

impl PassReason {
    /// Stable lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            PassReason::NoRoute => "no-route",
            PassReason::RouteBypass => "route",
            PassReason::Method => "method",
            PassReason::Credentials => "credentials",
            PassReason::HitForPass => "hit-for-pass",
            PassReason::Unshareable => "unshareable",
        }
    }
}

/// Whether a request may be answered from the cache or coalesced with others.
/// Only GET and HEAD without credentials may be (RFC 9111 §3.5: a shared cache
/// must not reuse answers to requests with `Authorization`; `Cookie` marks a
/// personalised request).
pub fn request_pass_reason(method: &Method, headers: &HeaderMap) -> Option<PassReason> {
    if method != Method::GET && method != Method::HEAD {
        return Some(PassReason::Method);
    }
    if crate::http::contains_any(headers, &[header::AUTHORIZATION, header::COOKIE]) {
        return Some(PassReason::Credentials);
    }
    None
}

/// What a shared cache may do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shareability {
    /// Store it and hand it to followers.
    Store,
    /// Hand it to the clients waiting now, but do not store it (errors,
    /// 404s without negative caching, answers without freshness…).
    ShareOnly,
    /// Only the client whose request fetched it may see it.
    Private,
}

/// Decides what a shared cache may do with a response to a GET, from the
/// directives of the field that governs it (see [`ResponseDirectives`]) and
/// the storage verdict of [`not_storable_reason`].
///
/// Never shared with another client: `no-store`, `private` (either form),
/// `Set-Cookie`, `Vary: *`. Otherwise stored when storable, else handed only
/// to the clients waiting for this very fetch. A `no-cache` response is
/// shared with those: it left the origin after they asked, which is all a
/// validation would tell them (later requests revalidate it).
pub fn shareability(
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    not_storable: Option<NotStorable>,
) -> Shareability {
    if never_shared(headers, directives).is_some() {
        Shareability::Private
    } else if not_storable.is_none() {
        Shareability::Store
    } else {
        Shareability::ShareOnly
    }
}

/// The one decision of whether a response may ever reach another client:
/// the first of `no-store`, `private` (either form), `Set-Cookie` and
/// `Vary: *` it carries. Both storability and shareability read it.
fn never_shared(headers: &HeaderMap, directives: &ResponseDirectives) -> Option<NotStorable> {
    if directives.no_store {
        Some(NotStorable::NoStore)
    } else if directives.private.is_some() {
        Some(NotStorable::Private)
    } else if headers.contains_key(header::SET_COOKIE) {
        Some(NotStorable::SetCookie)
    } else if vary_names(headers).any(|name| name == "*") {
        Some(NotStorable::VaryStar)
    } else {
        None
    }
}

/// What storing and sharing a response depend on in the request it answers,
/// read once per fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// The request said `Cache-Control: no-store`.
    pub no_store: bool,
    /// The request carried `Authorization`.
    pub authorization: bool,
}

impl RequestFacts {
    /// The facts of a request with `headers` whose cache directives are
    /// `directives` (parsed once, by the caller).
    pub fn new(headers: &HeaderMap, directives: &RequestDirectives) -> RequestFacts {
        RequestFacts {
            no_store: directives.no_store,
            authorization: headers.contains_key(header::AUTHORIZATION),
        }
    }
}

/// Everything a shared cache decides about one response to a GET, decided
/// once: the directives of its governing field, why it may not be stored (if
/// so), and what may be done with it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The response's directives (see [`ResponseDirectives::from_headers`]).
    pub directives: ResponseDirectives,
    /// Why it may not be stored; `None` when it may.
    pub not_storable: Option<NotStorable>,
    /// Whether it is stored, handed only to the clients waiting now, or
    /// kept for the client that fetched it.
    pub shareability: Shareability,
}

/// Judges a response with `status` and `headers` to a GET described by
/// `request`, under the route's `policy`: its directives are parsed here,
/// once, and every later decision reads this verdict.
pub fn judge(
    request: &RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
    policy: &FreshnessPolicy,
) -> Verdict {
    let directives = ResponseDirectives::from_headers(headers);
    let not_storable =
        not_storable_reason(&Method::GET, request, status, headers, &directives, policy);
    let shareability = shareability(headers, &directives, not_storable);
    Verdict {
        directives,
        not_storable,
        shareability,
    }
}

#[cfg(test)]
mod tests;
