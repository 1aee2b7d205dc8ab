//! Cache directive grammar: `Cache-Control` (RFC 9111 §5.2), the RFC 9213
//! targeted fields (`CDN-Cache-Control`, corral's own `Corral-Cache-Control`)
//! read as RFC 8941 dictionaries, and `Pragma`, parsed into typed directives.
//! Pure grammar: what the directives *mean* for storing and reusing a
//! response is `cache::policy`'s to decide.
//!
//! # Which header field speaks for the origin
//!
//! [`ResponseDirectives::from_headers`] reads the first of these fields that
//! is present, parses and is non-empty (RFC 9213 §2.2, target list
//! `[Corral-Cache-Control, CDN-Cache-Control]`): `Corral-Cache-Control`,
//! `CDN-Cache-Control`, then `Cache-Control`. Targeted fields are Structured
//! Field dictionaries: one that does not parse (upper-case keys, a trailing
//! comma, …) is ignored as a whole.
//!
//! # Malformed and duplicated values
//!
//! - Directive names are case-insensitive; arguments may be quoted.
//! - `max-age` / `s-maxage` with a malformed argument (not 1*DIGIT: empty,
//!   negative, fractional) or with conflicting duplicates read as zero (the
//!   response is stale), as RFC 9111 §4.2.1 allows. Identical duplicates are
//!   not a conflict.
//! - Values beyond 2^31 seconds saturate at 2^31 (RFC 9111 §1.2.2).
//! - `stale-while-revalidate` / `stale-if-error`: a malformed argument is
//!   ignored (no window); conflicting duplicates take the smallest window.
//! - Request directives only narrow what one client is served, so a malformed
//!   argument is ignored and conflicting duplicates take the most restrictive.
//! - `no-cache` and `private` with field names keep their names
//!   ([`FieldScope::Fields`]); policy treats them as their bare forms.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};

use super::structured;

/// The `Corral-Cache-Control` targeted field (RFC 9213): cache directives for
/// corral alone, taking precedence over every other caching field.
pub static CORRAL_CACHE_CONTROL: HeaderName = HeaderName::from_static("corral-cache-control");
/// The `CDN-Cache-Control` targeted field (RFC 9213 §3).
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The largest delta-seconds value corral represents, 2^31 seconds (about 68
/// years). Larger values, and calculations that would exceed it, saturate here
/// (RFC 9111 §1.2.2).
pub const DELTA_SECONDS_MAX: Duration = Duration::from_secs(1 << 31);

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
/// module docs for precedence and error handling). Durations are whole
/// seconds (delta-seconds, which a stored entry relies on to keep its stale
/// windows in four bytes) and never exceed [`DELTA_SECONDS_MAX`].
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
    /// origin. `cache::policy::reuse` does not look at it; the caller acts on it.
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
// Lexing shared by the parsers above
// ---------------------------------------------------------------------------

/// All lines of a field joined with ", ", or `None` if absent or not ASCII.
pub fn join_lines(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
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
pub fn list_members_of(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_list)
        .map(str::to_owned)
        .collect()
}

/// Splits a list value at commas that are not inside a quoted string.
pub fn split_list(value: &str) -> Vec<&str> {
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
pub fn list_directives(headers: &HeaderMap, name: &HeaderName) -> Vec<(String, Option<String>)> {
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
pub fn unquote(arg: &str) -> String {
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
pub fn delta_seconds(arg: &str) -> Option<Duration> {
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
pub fn delta_or_stale(arg: Option<&str>) -> Duration {
    arg.and_then(delta_seconds).unwrap_or(Duration::ZERO)
}

fn saturating_secs(secs: u64) -> Duration {
    Duration::from_secs(secs.min(DELTA_SECONDS_MAX.as_secs()))
}
