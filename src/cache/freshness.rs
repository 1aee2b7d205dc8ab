//! Freshness, age, storability and validation maths for a shared cache
//! (RFC 9111, RFC 5861, RFC 9213, RFC 9110 §13), as pure functions.
//!
//! Nothing here reads a clock or does I/O: every instant is an argument. Local
//! instants are [`tokio::time::Instant`]s, so paused-time tests are exact; wall
//! clock values ([`SystemTime`]) are only compared with the HTTP dates in
//! `Date`, `Expires`, `Last-Modified` and `If-Modified-Since`.
//!
//! # Which header field speaks for the origin
//!
//! A response's cache policy comes from the first of these fields that is
//! present, parses and is non-empty (RFC 9213 §2.2, target list
//! `[Corral-Cache-Control, CDN-Cache-Control]`):
//!
//! 1. `Corral-Cache-Control` (targeted at corral alone),
//! 2. `CDN-Cache-Control`,
//! 3. `Cache-Control` (and `Expires`).
//!
//! When a targeted field is used, `Cache-Control` **and `Expires`** are
//! ignored for everything: freshness, `no-store`, `private`, stale windows.
//! That is the RFC's intent (`CDN-Cache-Control: max-age=600` with
//! `Cache-Control: no-store` means "a CDN may store this, browsers may not").
//! Targeted fields are Structured Field dictionaries (RFC 8941): a field that
//! does not parse (upper-case keys, a trailing comma, …) is ignored as a whole.
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
//! # Malformed and duplicated values
//!
//! - Directive names are case-insensitive; arguments may be quoted.
//! - `max-age` / `s-maxage` with a malformed argument (not 1*DIGIT: empty,
//!   negative, fractional) or with conflicting duplicates make the response
//!   stale (lifetime 0), as RFC 9111 §4.2.1 allows. Identical duplicates are
//!   not a conflict. Several differing `Expires` lines, or an invalid one
//!   (e.g. `0`), also mean "already expired".
//! - Values beyond 2^31 seconds saturate at 2^31 (RFC 9111 §1.2.2).
//! - `stale-while-revalidate` / `stale-if-error`: a malformed argument is
//!   ignored (no window); conflicting duplicates take the smallest window.
//! - Request directives only narrow what one client is served, so a malformed
//!   argument is ignored and conflicting duplicates take the most restrictive.
//! - `no-cache` and `private` with field names are treated as their bare forms
//!   (RFC 9111 §5.2.2.4 and §5.2.2.7 note this common, conservative handling):
//!   a qualified `private` response is never stored, a qualified `no-cache` one
//!   is revalidated before every reuse.
//! - An `Age` that is not a single delta-seconds value makes the response
//!   stale (RFC 9111 §5.1); of several `Age` lines the first is used.
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

/// The `Corral-Cache-Control` targeted field (RFC 9213): cache directives for
/// corral alone, taking precedence over every other caching field.
pub static CORRAL_CACHE_CONTROL: HeaderName = HeaderName::from_static("corral-cache-control");
/// The `CDN-Cache-Control` targeted field (RFC 9213 §3).
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The largest delta-seconds value corral represents, 2^31 seconds (about 68
/// years). Larger values, and calculations that would exceed it, saturate here
/// (RFC 9111 §1.2.2).
pub const DELTA_SECONDS_MAX: Duration = Duration::from_secs(1 << 31);

/// Share of `Date` − `Last-Modified` used as a heuristic lifetime (RFC 9111
/// §4.2.2 suggests 10%).
const HEURISTIC_FRACTION: u32 = 10;

// ---------------------------------------------------------------------------
// Response directives
// ---------------------------------------------------------------------------

/// Which header field a response's directives were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectiveSource {
    /// `Corral-Cache-Control`, a targeted field.
    CorralCacheControl,
    /// `CDN-Cache-Control`, a targeted field.
    CdnCacheControl,
    /// `Cache-Control` (with `Expires`), whether or not it is present.
    #[default]
    CacheControl,
}

impl DirectiveSource {
    /// Whether this is an RFC 9213 targeted field, which makes `Expires`
    /// irrelevant.
    pub fn is_targeted(self) -> bool {
        self != DirectiveSource::CacheControl
    }
}

/// The reach of a `no-cache` or `private` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldScope {
    /// The bare directive: the whole response.
    Whole,
    /// The qualified form, with the (lower-cased) field names it lists.
    /// Corral treats it as [`FieldScope::Whole`] in every decision.
    Fields(Vec<String>),
}

impl FieldScope {
    /// Combines two occurrences of the same directive: the bare form wins,
    /// field lists are united.
    fn merge(self, other: FieldScope) -> FieldScope {
        match (self, other) {
            (FieldScope::Fields(mut a), FieldScope::Fields(b)) => {
                for name in b {
                    if !a.contains(&name) {
                        a.push(name);
                    }
                }
                FieldScope::Fields(a)
            }
            _ => FieldScope::Whole,
        }
    }

    fn from_argument(arg: Option<&str>) -> FieldScope {
        let names: Vec<String> = arg
            .unwrap_or("")
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        if names.is_empty() {
            FieldScope::Whole
        } else {
            FieldScope::Fields(names)
        }
    }
}

/// A response's cache directives, read from the field that governs it (see the
/// module docs for precedence and error handling). Durations never exceed
/// [`DELTA_SECONDS_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseDirectives {
    /// The field these directives came from.
    pub source: DirectiveSource,
    /// `max-age`; `Some(ZERO)` when malformed or conflicting.
    pub max_age: Option<Duration>,
    /// `s-maxage`; `Some(ZERO)` when malformed or conflicting.
    pub s_maxage: Option<Duration>,
    /// `no-store`: never store, never reuse.
    pub no_store: bool,
    /// `no-cache`: revalidate before every reuse (either form).
    pub no_cache: Option<FieldScope>,
    /// `private`: a shared cache must not store it (either form).
    pub private: Option<FieldScope>,
    /// `public`: explicitly cacheable, even with `Authorization`.
    pub public: bool,
    /// `must-revalidate`: never serve stale.
    pub must_revalidate: bool,
    /// `proxy-revalidate`: a shared cache never serves it stale.
    pub proxy_revalidate: bool,
    /// `stale-while-revalidate` window (RFC 5861 §3); malformed ones are dropped.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` window (RFC 5861 §4); malformed ones are dropped.
    pub stale_if_error: Option<Duration>,
    /// `immutable` (RFC 8246): the content will not change while fresh.
    pub immutable: bool,
}

impl ResponseDirectives {
    /// Reads the directives governing `headers`: the first valid, non-empty
    /// targeted field (`Corral-Cache-Control`, then `CDN-Cache-Control`), else
    /// `Cache-Control`. Never fails: unparseable input degrades as the module
    /// docs describe.
    pub fn from_headers(headers: &HeaderMap) -> ResponseDirectives {
        let targeted = [
            (&CORRAL_CACHE_CONTROL, DirectiveSource::CorralCacheControl),
            (&CDN_CACHE_CONTROL, DirectiveSource::CdnCacheControl),
        ];
        for (name, source) in targeted {
            if let Some(mut directives) = targeted_directives(headers, name) {
                directives.source = source;
                return directives;
            }
        }
        cache_control_response_directives(headers)
    }

    /// Whether the response carries explicit freshness in its governing field:
    /// `s-maxage`, `max-age`, or (without a targeted field) `Expires`.
    pub fn has_explicit_freshness(&self, headers: &HeaderMap) -> bool {
        self.s_maxage.is_some()
            || self.max_age.is_some()
            || (!self.source.is_targeted() && headers.contains_key(header::EXPIRES))
    }
}

/// Parses `Cache-Control` as response directives.
fn cache_control_response_directives(headers: &HeaderMap) -> ResponseDirectives {
    let mut out = ResponseDirectives::default();
    for (name, arg) in list_directives(headers, &header::CACHE_CONTROL) {
        let arg = arg.as_deref();
        match name.as_str() {
            "max-age" => out.max_age = merge_freshness(out.max_age, delta_or_stale(arg)),
            "s-maxage" => out.s_maxage = merge_freshness(out.s_maxage, delta_or_stale(arg)),
            "stale-while-revalidate" => {
                out.stale_while_revalidate =
                    merge_window(out.stale_while_revalidate, arg.and_then(delta_seconds));
            }
            "stale-if-error" => {
                out.stale_if_error = merge_window(out.stale_if_error, arg.and_then(delta_seconds));
            }
            "no-cache" => out.no_cache = Some(merge_scope(out.no_cache, arg)),
            "private" => out.private = Some(merge_scope(out.private, arg)),
            "no-store" => out.no_store = true,
            "must-revalidate" => out.must_revalidate = true,
            "proxy-revalidate" => out.proxy_revalidate = true,
            // Permissive directives take no argument; one with an argument is
            // not what it claims to be, so it grants nothing.
            "public" => out.public |= arg.is_none(),
            "immutable" => out.immutable |= arg.is_none(),
            _ => {}
        }
    }
    out
}

/// A second `max-age`/`s-maxage`: agreeing values stand, conflicting ones make
/// the response stale.
fn merge_freshness(previous: Option<Duration>, next: Duration) -> Option<Duration> {
    match previous {
        Some(seen) if seen != next => Some(Duration::ZERO),
        _ => Some(next),
    }
}

/// A second stale window: the smaller one stands.
fn merge_window(previous: Option<Duration>, next: Option<Duration>) -> Option<Duration> {
    match (previous, next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn merge_scope(previous: Option<FieldScope>, arg: Option<&str>) -> FieldScope {
    let next = FieldScope::from_argument(arg);
    match previous {
        Some(seen) => seen.merge(next),
        None => next,
    }
}

/// The directives of a targeted field, or `None` when it is absent, empty or
/// does not parse as a Structured Field dictionary (RFC 9213 §2.1).
fn targeted_directives(headers: &HeaderMap, name: &HeaderName) -> Option<ResponseDirectives> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let mut joined = String::new();
    for line in lines {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(line.to_str().ok()?);
    }
    let members = structured::dictionary(&joined)?;
    if members.is_empty() {
        return None;
    }
    let mut out = ResponseDirectives::default();
    for (key, value) in members {
        use structured::Value;
        // RFC 9213 §2.1: values of the wrong type are not consumed. For
        // freshness that means "no freshness" (stale); for restrictive
        // directives, anything but an explicit `?0` keeps them on.
        let restrictive = !matches!(value, Value::Boolean(false));
        let scope = || match &value {
            Value::String(fields) => FieldScope::from_argument(Some(fields)),
            _ => FieldScope::Whole,
        };
        match key.as_str() {
            "max-age" => out.max_age = Some(structured_delta(&value).unwrap_or(Duration::ZERO)),
            "s-maxage" => out.s_maxage = Some(structured_delta(&value).unwrap_or(Duration::ZERO)),
            "stale-while-revalidate" => out.stale_while_revalidate = structured_delta(&value),
            "stale-if-error" => out.stale_if_error = structured_delta(&value),
            "no-store" => out.no_store = restrictive,
            "must-revalidate" => out.must_revalidate = restrictive,
            "proxy-revalidate" => out.proxy_revalidate = restrictive,
            "no-cache" => out.no_cache = restrictive.then(scope),
            "private" => out.private = restrictive.then(scope),
            "public" => out.public = value == Value::Boolean(true),
            "immutable" => out.immutable = value == Value::Boolean(true),
            _ => {}
        }
    }
    Some(out)
}

/// A non-negative structured Integer as delta-seconds.
fn structured_delta(value: &structured::Value) -> Option<Duration> {
    match value {
        structured::Value::Integer(n) => u64::try_from(*n).ok().map(saturating_secs),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Request directives
// ---------------------------------------------------------------------------

/// How stale a response a client accepts (`max-stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// `max-stale` without a value: any staleness.
    Any,
    /// `max-stale=N`: at most this far past its freshness lifetime.
    Limit(Duration),
}

/// A request's cache directives (RFC 9111 §5.2.1). They only ever narrow what
/// this one client is served; malformed arguments are ignored and conflicting
/// duplicates take the most restrictive value. Pass
/// `RequestDirectives::default()` to ignore the client's wishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestDirectives {
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): validate
    /// before reusing a stored response.
    pub no_cache: bool,
    /// `no-store`: store neither this request nor its response.
    pub no_store: bool,
    /// `max-age`: the oldest response the client accepts.
    pub max_age: Option<Duration>,
    /// `max-stale`: how stale a response the client accepts.
    pub max_stale: Option<MaxStale>,
    /// `min-fresh`: the freshness the response must still have left.
    pub min_fresh: Option<Duration>,
    /// `only-if-cached`: answer from the cache or with 504, never from the
    /// origin. [`reuse`] does not look at it; the caller acts on it.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// These directives without the ones a client could use to force a trip
    /// to the origin past a usable stored answer (`no-cache`, `no-store`,
    /// `max-age`, `min-fresh`), for routes that ignore them. `max-stale` and
    /// `only-if-cached` only ever spare the origin, and stay.
    pub fn without_origin_forcing(self) -> RequestDirectives {
        RequestDirectives {
            no_cache: false,
            no_store: false,
            max_age: None,
            min_fresh: None,
            ..self
        }
    }

    /// Reads `Cache-Control` from request headers; `Pragma: no-cache` counts
    /// as `no-cache` only when the request has no `Cache-Control` at all
    /// (RFC 9111 §5.4).
    pub fn from_headers(headers: &HeaderMap) -> RequestDirectives {
        let mut out = RequestDirectives::default();
        if !headers.contains_key(header::CACHE_CONTROL) {
            out.no_cache = list_directives(headers, &header::PRAGMA)
                .into_iter()
                .any(|(name, _)| name == "no-cache");
            return out;
        }
        for (name, arg) in list_directives(headers, &header::CACHE_CONTROL) {
            let value = arg.as_deref().and_then(delta_seconds);
            match name.as_str() {
                "no-cache" => out.no_cache = true,
                "no-store" => out.no_store = true,
                "only-if-cached" => out.only_if_cached = true,
                "max-age" => out.max_age = merge_window(out.max_age, value),
                "min-fresh" => out.min_fresh = max_of(out.min_fresh, value),
                "max-stale" => {
                    let next = match (&arg, value) {
                        (None, _) => Some(MaxStale::Any),
                        (Some(_), Some(limit)) => Some(MaxStale::Limit(limit)),
                        (Some(_), None) => None,
                    };
                    out.max_stale = match (out.max_stale, next) {
                        (Some(MaxStale::Limit(a)), Some(MaxStale::Limit(b))) => {
                            Some(MaxStale::Limit(a.min(b)))
                        }
                        (Some(MaxStale::Limit(a)), _) | (_, Some(MaxStale::Limit(a))) => {
                            Some(MaxStale::Limit(a))
                        }
                        (seen, next) => seen.or(next),
                    };
                }
                _ => {}
            }
        }
        out
    }
}

fn max_of(previous: Option<Duration>, next: Option<Duration>) -> Option<Duration> {
    match (previous, next) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

// ---------------------------------------------------------------------------
// Freshness lifetime
// ---------------------------------------------------------------------------

/// A route's say in freshness: what corral does when the origin is silent,
/// and when it overrides the origin. See the module docs for precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshnessPolicy {
    /// Lifetime of a 200 without explicit freshness (or of every 200 with
    /// `override_origin`).
    pub route_ttl: Duration,
    /// The route's ttls win over the origin's `s-maxage`, `max-age` and
    /// `Expires` (for 200, and for 404/410 when `negative_ttl` is set).
    pub override_origin: bool,
    /// Whether heuristic freshness from `Last-Modified` may be used.
    pub heuristic: bool,
    /// The longest heuristic lifetime.
    pub heuristic_max: Duration,
    /// Lifetime of 404 and 410 responses; `None` means they are never stored
    /// (errors are only cached when a route asks for negative caching).
    pub negative_ttl: Option<Duration>,
    /// Stale-while-revalidate window used when the origin sends none.
    pub stale_while_revalidate: Option<Duration>,
    /// Stale-if-error window used when the origin sends none.
    pub stale_if_error: Option<Duration>,
}

impl FreshnessPolicy {
    /// A policy giving 200s `route_ttl` by default, with no override, no
    /// heuristic, no negative caching and no default stale windows.
    pub fn with_ttl(route_ttl: Duration) -> FreshnessPolicy {
        FreshnessPolicy {
            route_ttl,
            override_origin: false,
            heuristic: false,
            heuristic_max: Duration::ZERO,
            negative_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
        }
    }

    /// The route's own ttl for `status`, if it has one: `route_ttl` for 200,
    /// `negative_ttl` for 404 and 410.
    fn route_lifetime(&self, status: StatusCode) -> Option<Lifetime> {
        match status {
            StatusCode::OK => Some(Lifetime::new(self.route_ttl, LifetimeSource::Route)),
            StatusCode::NOT_FOUND | StatusCode::GONE => self
                .negative_ttl
                .map(|ttl| Lifetime::new(ttl, LifetimeSource::NegativeTtl)),
            _ => None,
        }
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
    fn new(duration: Duration, source: LifetimeSource) -> Lifetime {
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
        && let Some(lifetime) = policy.route_lifetime(status)
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
    policy
        .route_lifetime(status)
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
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
        found = match (found, parsed) {
            (_, None) | (Expires::Expired, _) => return Expires::Expired,
            (Expires::Absent, Some(at)) => Expires::At(at),
            (Expires::At(seen), Some(at)) if seen == at => Expires::At(seen),
            (Expires::At(_), Some(_)) => return Expires::Expired,
        };
    }
    found
}

/// The first line of an HTTP-date field, if it parses.
fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
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
/// An `Age` that is not one delta-seconds value (a list, a negative number,
/// text) counts as [`DELTA_SECONDS_MAX`], making the response stale (RFC 9111
/// §5.1); of several `Age` lines only the first is used.
pub fn corrected_initial_age(
    headers: &HeaderMap,
    request_time: Instant,
    response_time: Instant,
    received_at: SystemTime,
) -> Duration {
    let age_value = match headers.get(header::AGE) {
        None => Duration::ZERO,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| delta_seconds(v.trim()))
            .unwrap_or(DELTA_SECONDS_MAX),
    };
    let apparent = apparent_age(header_date(headers, &header::DATE), received_at);
    apparent.max(corrected_age_value(age_value, request_time, response_time))
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
    /// The status is not one corral stores: non-final, 206, 304, an error
    /// other than 404/410, or 404/410 without negative caching.
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
/// does not combine ranges); errors only as 404/410 with a `negative_ttl`.
///
/// `response` must be [`ResponseDirectives::from_headers`] of
/// `response_headers`, so a targeted field governs `no-store` and `private`.
/// Run it again on headers merged from a 304 ([`freshen_headers`]).
pub fn not_storable_reason(
    method: &Method,
    request_headers: &HeaderMap,
    status: StatusCode,
    response_headers: &HeaderMap,
    response: &ResponseDirectives,
    policy: &FreshnessPolicy,
) -> Option<NotStorable> {
    if method != Method::GET {
        return Some(NotStorable::Method);
    }
    if !is_storable_status(status, policy) {
        return Some(NotStorable::Status);
    }
    if response.no_store || RequestDirectives::from_headers(request_headers).no_store {
        return Some(NotStorable::NoStore);
    }
    if response.private.is_some() {
        return Some(NotStorable::Private);
    }
    if request_headers.contains_key(header::AUTHORIZATION)
        && !(response.public || response.must_revalidate || response.s_maxage.is_some())
    {
        return Some(NotStorable::Authorization);
    }
    if response_headers.contains_key(header::SET_COOKIE) {
        return Some(NotStorable::SetCookie);
    }
    if crate::http::vary_names(response_headers).any(|name| name == "*") {
        return Some(NotStorable::VaryStar);
    }
    let route_ttl = match status {
        StatusCode::OK => !policy.route_ttl.is_zero(),
        StatusCode::NOT_FOUND | StatusCode::GONE => policy.negative_ttl.is_some(),
        _ => false,
    };
    let cacheable = response.has_explicit_freshness(response_headers)
        || is_heuristically_cacheable(status)
        || response.public
        || route_ttl;
    if !cacheable {
        return Some(NotStorable::NoFreshness);
    }
    None
}

fn is_storable_status(status: StatusCode, policy: &FreshnessPolicy) -> bool {
    match status.as_u16() {
        404 | 410 => policy.negative_ttl.is_some(),
        206 | 304 => false,
        200..=399 => true,
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
    let Some(since) = line
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
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
/// - with no validator at all, only a stored response without one matches.
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
        None => !has_validator(stored),
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
pub fn freshen_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let nominated: Vec<HeaderName> = list_members_of(not_modified, &header::CONNECTION)
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    let mut merged = stored.clone();
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

/// An entity-tag (RFC 9110 §8.8.3), borrowed from a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// The opaque tag without its quotes.
    opaque: &'a str,
}

impl EntityTag<'_> {
    /// Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, weakness ignored.
    fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }

    /// Strong comparison: both strong and equal.
    fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }
}

fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

/// Parses one entity-tag at the start of `input`, returning it and the rest.
fn entity_tag_prefix(input: &str) -> Option<(EntityTag<'_>, &str)> {
    let (weak, rest) = match input.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let opaque = &rest[..end];
    if !opaque.bytes().all(is_etagc) {
        return None;
    }
    Some((EntityTag { weak, opaque }, &rest[end + 1..]))
}

/// The stored response's `ETag`, if it is one valid entity-tag.
fn stored_etag(headers: &HeaderMap) -> Option<EntityTag<'_>> {
    let value = headers.get(header::ETAG)?.to_str().ok()?.trim();
    match entity_tag_prefix(value)? {
        (tag, "") => Some(tag),
        _ => None,
    }
}

/// A comma-separated list of entity-tags; `None` if any member is malformed.
fn entity_tag_list(value: &str) -> Option<Vec<EntityTag<'_>>> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        let (tag, after) = entity_tag_prefix(rest)?;
        tags.push(tag);
        rest = after.trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
}

// ---------------------------------------------------------------------------
// Lexing shared by the parsers above
// ---------------------------------------------------------------------------

/// All lines of a field joined with ", ", or `None` if absent or not ASCII.
fn join_lines(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in headers.get_all(name) {
        let value = value.to_str().ok()?;
        match joined.as_mut() {
            Some(joined) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            None => joined = Some(value.to_owned()),
        }
    }
    joined
}

/// The members of a comma-separated list field across all its lines, split
/// outside quoted strings and trimmed; lines that are not visible ASCII are
/// skipped.
fn list_members_of(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_list)
        .map(str::to_owned)
        .collect()
}

/// Splits a list value at commas that are not inside a quoted string.
fn split_list(value: &str) -> Vec<&str> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, byte) in value.bytes().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                quoted = false;
            }
        } else if byte == b'"' {
            quoted = true;
        } else if byte == b',' {
            members.push(value[start..at].trim());
            start = at + 1;
        }
    }
    members.push(value[start..].trim());
    members.retain(|member| !member.is_empty());
    members
}

/// `token [ "=" ( token / quoted-string ) ]` directives of a list field: names
/// lower-cased, arguments unquoted.
fn list_directives(headers: &HeaderMap, name: &HeaderName) -> Vec<(String, Option<String>)> {
    list_members_of(headers, name)
        .iter()
        .map(|member| match member.split_once('=') {
            Some((name, arg)) => (name.trim().to_ascii_lowercase(), Some(unquote(arg.trim()))),
            None => (member.to_ascii_lowercase(), None),
        })
        .collect()
}

/// Removes the quotes and backslash escapes of a quoted-string; a token is
/// returned as is; an unterminated quoted-string keeps what follows the quote.
fn unquote(arg: &str) -> String {
    let Some(inner) = arg.strip_prefix('"') else {
        return arg.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// `delta-seconds = 1*DIGIT`, saturating at [`DELTA_SECONDS_MAX`]; `None` for
/// anything else (empty, signed, fractional, text).
fn delta_seconds(arg: &str) -> Option<Duration> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let max = DELTA_SECONDS_MAX.as_secs();
    let secs = arg.bytes().fold(0u64, |secs, digit| {
        secs.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
            .min(max)
    });
    Some(Duration::from_secs(secs))
}

/// A freshness argument: its delta-seconds, or zero (stale) when missing or
/// malformed.
fn delta_or_stale(arg: Option<&str>) -> Duration {
    arg.and_then(delta_seconds).unwrap_or(Duration::ZERO)
}

fn saturating_secs(secs: u64) -> Duration {
    Duration::from_secs(secs.min(DELTA_SECONDS_MAX.as_secs()))
}

/// Just enough of RFC 8941 Structured Fields to read a Dictionary strictly:
/// any syntax error rejects the whole field.
mod structured {
    /// A member's value; only the types cache directives use keep their data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Value {
        Integer(i64),
        Decimal,
        String(String),
        Token,
        Bytes,
        Boolean(bool),
        InnerList,
    }

    /// Parses a Dictionary (RFC 8941 §4.2.2); a repeated key keeps its last
    /// value. `None` on any syntax error.
    pub(super) fn dictionary(input: &str) -> Option<Vec<(String, Value)>> {
        let mut parser = Parser {
            input: input.as_bytes(),
            at: 0,
        };
        parser.dictionary()
    }

    struct Parser<'a> {
        input: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.input.get(self.at).copied()
        }

        fn bump(&mut self) -> Option<u8> {
            let byte = self.peek()?;
            self.at += 1;
            Some(byte)
        }

        fn skip(&mut self, set: &[u8]) {
            while self.peek().is_some_and(|b| set.contains(&b)) {
                self.at += 1;
            }
        }

        fn dictionary(&mut self) -> Option<Vec<(String, Value)>> {
            let mut members: Vec<(String, Value)> = Vec::new();
            self.skip(b" ");
            while self.peek().is_some() {
                let key = self.key()?;
                let value = if self.peek() == Some(b'=') {
                    self.at += 1;
                    self.item_or_inner_list()?
                } else {
                    self.parameters()?;
                    Value::Boolean(true)
                };
                members.retain(|(seen, _)| *seen != key);
                members.push((key, value));
                self.skip(b" \t");
                if self.peek().is_none() {
                    break;
                }
                if self.bump()? != b',' {
                    return None;
                }
                self.skip(b" \t");
                self.peek()?; // a trailing comma is an error
            }
            Some(members)
        }

        fn key(&mut self) -> Option<String> {
            let start = self.at;
            match self.bump()? {
                b'a'..=b'z' | b'*' => {}
                _ => return None,
            }
            while self
                .peek()
                .is_some_and(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'))
            {
                self.at += 1;
            }
            String::from_utf8(self.input[start..self.at].to_vec()).ok()
        }

        fn item_or_inner_list(&mut self) -> Option<Value> {
            if self.peek() == Some(b'(') {
                self.at += 1;
                loop {
                    self.skip(b" ");
                    if self.peek() == Some(b')') {
                        self.at += 1;
                        self.parameters()?;
                        return Some(Value::InnerList);
                    }
                    self.bare_item()?;
                    self.parameters()?;
                    if !matches!(self.peek(), Some(b' ' | b')')) {
                        return None;
                    }
                }
            }
            let value = self.bare_item()?;
            self.parameters()?;
            Some(value)
        }

        /// Parameters are parsed for validity and ignored (RFC 9213 §2.1).
        fn parameters(&mut self) -> Option<()> {
            while self.peek() == Some(b';') {
                self.at += 1;
                self.skip(b" ");
                self.key()?;
                if self.peek() == Some(b'=') {
                    self.at += 1;
                    self.bare_item()?;
                }
            }
            Some(())
        }

        fn bare_item(&mut self) -> Option<Value> {
            match self.peek()? {
                b'-' | b'0'..=b'9' => self.number(),
                b'"' => self.string(),
                b':' => self.bytes(),
                b'?' => self.boolean(),
                b'*' | b'a'..=b'z' | b'A'..=b'Z' => self.token(),
                _ => None,
            }
        }

        fn number(&mut self) -> Option<Value> {
            let negative = self.peek() == Some(b'-');
            if negative {
                self.at += 1;
            }
            let start = self.at;
            let mut dot = None;
            while let Some(byte) = self.peek() {
                match byte {
                    b'0'..=b'9' => {}
                    b'.' if dot.is_none() => {
                        if self.at - start > 12 {
                            return None;
                        }
                        dot = Some(self.at);
                    }
                    _ => break,
                }
                self.at += 1;
                if dot.is_none() && self.at - start > 15 {
                    return None;
                }
            }
            let digits = &self.input[start..self.at];
            match dot {
                None => {
                    if digits.is_empty() {
                        return None;
                    }
                    let magnitude = std::str::from_utf8(digits).ok()?.parse::<i64>().ok()?;
                    Some(Value::Integer(if negative {
                        -magnitude
                    } else {
                        magnitude
                    }))
                }
                Some(dot) => {
                    let fraction = self.at - dot - 1;
                    (dot > start && (1..=3).contains(&fraction)).then_some(Value::Decimal)
                }
            }
        }

        fn string(&mut self) -> Option<Value> {
            self.at += 1;
            let mut out = String::new();
            loop {
                match self.bump()? {
                    b'\\' => match self.bump()? {
                        byte @ (b'"' | b'\\') => out.push(char::from(byte)),
                        _ => return None,
                    },
                    b'"' => return Some(Value::String(out)),
                    byte @ 0x20..=0x7e => out.push(char::from(byte)),
                    _ => return None,
                }
            }
        }

        fn token(&mut self) -> Option<Value> {
            self.at += 1;
            while self
                .peek()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&b))
            {
                self.at += 1;
            }
            Some(Value::Token)
        }

        fn bytes(&mut self) -> Option<Value> {
            self.at += 1;
            loop {
                match self.bump()? {
                    b':' => return Some(Value::Bytes),
                    b if b.is_ascii_alphanumeric() || b"+/=".contains(&b) => {}
                    _ => return None,
                }
            }
        }

        fn boolean(&mut self) -> Option<Value> {
            self.at += 1;
            match self.bump()? {
                b'1' => Some(Value::Boolean(true)),
                b'0' => Some(Value::Boolean(false)),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let parsed = directives(&[("cache-control", "max-age=60, max-age=\"60\"")]);
        assert_eq!(parsed.max_age, Some(secs(60)));
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
        let parsed = directives(&[("cdn-cache-control", "max-age=60, max-age=600")]);
        assert_eq!(parsed.max_age, Some(secs(600)));
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
        assert_eq!(
            lifetime(200, &pairs, &policy()),
            life(90, LifetimeSource::SMaxAge)
        );
        let mut pairs = pairs;
        pairs[2].1 = "max-age=60";
        assert_eq!(
            lifetime(200, &pairs, &policy()),
            life(60, LifetimeSource::MaxAge)
        );
        pairs.pop();
        assert_eq!(
            lifetime(200, &pairs, &policy()),
            life(500, LifetimeSource::Expires)
        );
    }

    #[test]
    fn expires_lifetime_is_expires_minus_date() {
        let (d, e) = (date(100), date(400));
        assert_eq!(
            lifetime(200, &[("date", &d), ("expires", &e)], &policy()),
            life(300, LifetimeSource::Expires)
        );
        // Before Date: already expired, never negative.
        assert_eq!(
            lifetime(200, &[("date", &e), ("expires", &d)], &policy()),
            life(0, LifetimeSource::Expires)
        );
    }

    #[test]
    fn expires_without_a_valid_date_counts_from_receipt() {
        let e = date(120);
        assert_eq!(
            lifetime(200, &[("expires", &e)], &policy()),
            life(120, LifetimeSource::Expires)
        );
        assert_eq!(
            lifetime(200, &[("date", "yesterday"), ("expires", &e)], &policy()),
            life(120, LifetimeSource::Expires)
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

    #[test]
    fn conflicting_expires_lines_mean_already_expired() {
        let (a, b) = (date(60), date(120));
        assert_eq!(
            lifetime(200, &[("expires", &a), ("expires", &b)], &policy()),
            life(0, LifetimeSource::Expires)
        );
        assert_eq!(
            lifetime(200, &[("expires", &a), ("expires", &a)], &policy()),
            life(60, LifetimeSource::Expires)
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
        assert_eq!(
            lifetime(200, &[], &policy()),
            life(30, LifetimeSource::Route)
        );
        assert_eq!(
            lifetime(200, &[("cache-control", "public")], &policy()),
            life(30, LifetimeSource::Route)
        );
        assert_eq!(
            lifetime(200, &[("cache-control", "max-age=5")], &policy()),
            life(5, LifetimeSource::MaxAge)
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
        assert_eq!(
            lifetime(404, &[], &negative),
            life(7, LifetimeSource::NegativeTtl)
        );
        assert_eq!(
            lifetime(410, &[], &negative),
            life(7, LifetimeSource::NegativeTtl)
        );
        assert_eq!(lifetime(500, &[], &negative), life(0, LifetimeSource::None));
        // The origin's own freshness still wins unless the route overrides it.
        let cc = [("cache-control", "max-age=60")];
        assert_eq!(
            lifetime(404, &cc, &negative),
            life(60, LifetimeSource::MaxAge)
        );
        let overriding = FreshnessPolicy {
            override_origin: true,
            ..negative
        };
        assert_eq!(
            lifetime(404, &cc, &overriding),
            life(7, LifetimeSource::NegativeTtl)
        );
    }

    #[test]
    fn heuristic_is_a_tenth_of_date_minus_last_modified_capped() {
        let heuristic = FreshnessPolicy {
            heuristic: true,
            heuristic_max: secs(3600),
            ..policy()
        };
        let (lm, d) = (date(0), date(1000));
        let pairs = [("last-modified", lm.as_str()), ("date", d.as_str())];
        assert_eq!(
            lifetime(200, &pairs, &heuristic),
            life(100, LifetimeSource::Heuristic)
        );
        let capped = FreshnessPolicy {
            heuristic_max: secs(40),
            ..heuristic.clone()
        };
        assert_eq!(
            lifetime(200, &pairs, &capped),
            life(40, LifetimeSource::Heuristic)
        );
        // Explicit freshness disables the heuristic.
        let explicit = [pairs[0], pairs[1], ("cache-control", "max-age=3")];
        assert_eq!(
            lifetime(200, &explicit, &heuristic),
            life(3, LifetimeSource::MaxAge)
        );
    }

    #[test]
    fn heuristic_only_when_enabled_and_status_cacheable_or_public() {
        let heuristic = FreshnessPolicy {
            heuristic: true,
            heuristic_max: secs(3600),
            ..policy()
        };
        let (lm, d) = (date(0), date(1000));
        let pairs = [("last-modified", lm.as_str()), ("date", d.as_str())];
        assert_eq!(
            lifetime(200, &pairs, &policy()),
            life(30, LifetimeSource::Route)
        );
        assert_eq!(
            lifetime(301, &pairs, &heuristic),
            life(100, LifetimeSource::Heuristic)
        );
        assert_eq!(
            lifetime(302, &pairs, &heuristic),
            life(0, LifetimeSource::None)
        );
        let public = [pairs[0], pairs[1], ("cache-control", "public")];
        assert_eq!(
            lifetime(302, &public, &heuristic),
            life(100, LifetimeSource::Heuristic)
        );
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
        let heuristic = FreshnessPolicy {
            heuristic: true,
            heuristic_max: secs(3600),
            ..policy()
        };
        let (lm, d) = (date(1000), date(0));
        let pairs = [("last-modified", lm.as_str()), ("date", d.as_str())];
        assert_eq!(
            lifetime(200, &pairs, &heuristic),
            life(30, LifetimeSource::Route)
        );
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

    #[test]
    fn invalid_age_makes_the_response_stale() {
        let now = Instant::now();
        for bad in ["-5", "ten", "10, 20", "1.5", ""] {
            let map = headers(&[("age", bad)]);
            assert_eq!(
                corrected_initial_age(&map, now, now, wall(0)),
                DELTA_SECONDS_MAX,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn multiple_age_lines_use_the_first() {
        let now = Instant::now();
        let map = headers(&[("age", "7"), ("age", "bogus")]);
        assert_eq!(corrected_initial_age(&map, now, now, wall(0)), secs(7));
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
        not_storable_reason(
            &method,
            &headers(request_pairs),
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

    #[test]
    fn only_final_non_error_statuses_are_stored() {
        let explicit = [("cache-control", "max-age=60")];
        for status in [100, 206, 304, 400, 404, 500, 503] {
            assert_eq!(
                storable(Method::GET, &[], status, &explicit, &policy()),
                Some(NotStorable::Status),
                "{status}"
            );
        }
        for status in [200, 203, 204, 300, 301, 302, 307, 308] {
            assert_eq!(
                storable(Method::GET, &[], status, &explicit, &policy()),
                None,
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

    #[test]
    fn must_revalidate_and_proxy_revalidate_forbid_any_stale_use() {
        let generous = FreshnessPolicy {
            stale_while_revalidate: Some(secs(100)),
            stale_if_error: Some(secs(100)),
            ..policy()
        };
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
        let generous = FreshnessPolicy {
            stale_while_revalidate: Some(secs(100)),
            stale_if_error: Some(secs(100)),
            ..policy()
        };
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
        let route = FreshnessPolicy {
            stale_while_revalidate: Some(secs(10)),
            stale_if_error: Some(secs(300)),
            ..policy()
        };
        let ttl = life(30, LifetimeSource::Route);
        assert_eq!(decide(&[], ttl, 35, &[], &route), stale(true, true));
        assert_eq!(decide(&[], ttl, 100, &[], &route), stale(false, true));
        // The origin's window, even a smaller one, replaces the route's.
        let response = [("cache-control", "stale-while-revalidate=2")];
        assert_eq!(decide(&response, ttl, 35, &[], &route), stale(false, true));
    }

    #[test]
    fn s_maxage_refuses_route_windows_and_max_stale_but_not_origin_windows() {
        let route = FreshnessPolicy {
            stale_while_revalidate: Some(secs(10)),
            stale_if_error: Some(secs(300)),
            ..policy()
        };
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
        // No validator at all: only a validator-less stored response matches.
        assert!(!not_modified_applies(&strong, &HeaderMap::new()));
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
        let merged = freshen_headers(&stored, &fresh);
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
        let merged = freshen_headers(&stored, &headers(&[("date", &new)]));
        assert_eq!(merged[header::DATE], new.as_str());
        assert!(!merged.contains_key(header::AGE));
        let merged = freshen_headers(&stored, &HeaderMap::new());
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
        let merged = freshen_headers(&stored, &fresh);
        let mut names: Vec<&str> = merged.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-end-to-end"]);
    }
}
