//! Byte ranges (RFC 9110 §14): the `Range` request field for the `bytes`
//! unit, resolved against a representation of known length, and the
//! `If-Range` precondition (§13.1.5) that guards it. Pure grammar: what the
//! fields ask for, and whether `If-Range` names the stored representation;
//! how the answer is built is the caller's.
//!
//! | `Range` (representation of 10000 bytes) | [`Ranges`] |
//! |---|---|
//! | `bytes=0-499`, `bytes=9500-20000`, `bytes=-500`, `bytes=9500-`, `bytes=0-` | [`Ranges::One`], last byte clamped to 9999 |
//! | `bytes=0-0,-1`, `bytes=500-600,601-999` | [`Ranges::Several`] |
//! | `bytes=0-499,10000-` | [`Ranges::One`]: members past the end are dropped |
//! | `bytes=10000-`, `bytes=-0` | [`Ranges::Unsatisfiable`] (416) |
//! | `items=0-5`, `bytes=5-1`, `bytes=x-`, `bytes=`, more than [`MAX_RANGES`] members | [`Ranges::Ignore`] (RFC 9110 §14.2: a server MAY ignore an invalid `Range`) |

use std::time::Duration;

use http::header::{self, HeaderMap};

use super::conditional::{entity_tag_prefix, stored_etag};
use super::date::{header_date, parse_http_date};

/// The most `Range` members considered: a longer set is ignored (and the
/// whole representation served), as RFC 9110 §14.2 allows against broken or
/// abusive clients.
pub const MAX_RANGES: usize = 32;

/// One satisfiable byte range, `first` to `last` inclusive, inside the
/// representation it was resolved against (`last` < its length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Offset of the first byte.
    pub first: u64,
    /// Offset of the last byte, inclusive.
    pub last: u64,
}

impl ByteRange {
    /// How many bytes the range holds (at least one).
    pub fn length(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The `Content-Range` value of a 206 carrying this range of a
    /// representation of `complete` bytes: `bytes first-last/complete`.
    pub fn content_range(&self, complete: u64) -> String {
        format!("bytes {}-{}/{complete}", self.first, self.last)
    }
}

/// The `Content-Range` value of a 416 for a representation of `complete`
/// bytes: `bytes */complete` (RFC 9110 §14.4).
pub fn unsatisfied_content_range(complete: u64) -> String {
    format!("bytes */{complete}")
}

/// What a request's `Range` asks of one representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// Serve the whole representation (200): there is no `Range`, or it is
    /// to be ignored (another unit, invalid syntax, more than [`MAX_RANGES`]
    /// members, an `If-Range` that does not match, an empty representation).
    Ignore,
    /// Exactly one satisfiable range (206).
    One(ByteRange),
    /// Two or more satisfiable ranges, in the order asked.
    Several(Vec<ByteRange>),
    /// A valid `bytes` range set of which no member is satisfiable (416).
    Unsatisfiable,
}

/// One `range-spec` of a `bytes` range set, before it meets a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-`.
    From { first: u64, last: Option<u64> },
    /// `-length`: the final `length` bytes.
    Suffix(u64),
}

impl Spec {
    /// The bytes this spec selects of a representation of `len` bytes, or
    /// `None` when it selects none (RFC 9110 §14.1.1: an int-range is
    /// satisfiable when its first byte exists, a suffix-range when its length
    /// is not zero).
    fn resolve(self, len: u64) -> Option<ByteRange> {
        let end = len.checked_sub(1)?;
        match self {
            Spec::From { first, last } => (first <= end).then(|| ByteRange {
                first,
                last: last.map_or(end, |last| last.min(end)),
            }),
            Spec::Suffix(0) => None,
            Spec::Suffix(length) => Some(ByteRange {
                first: len.saturating_sub(length),
                last: end,
            }),
        }
    }
}

/// What the `Range` field value `value` asks of a representation of `len`
/// bytes (RFC 9110 §14.1.1, §14.2).
///
/// The unit is `bytes`, in any case; members are separated by commas with
/// optional whitespace, empty members skipped (§5.6.1). Last positions past
/// the end are clamped, a suffix longer than the representation is the whole
/// of it, members that select no byte are dropped. Anything invalid (no `=`,
/// another unit, an empty set, a member that is not `first-[last]` or
/// `-length` in decimal digits, a last position before its first) means the
/// field is ignored. Numbers too large for a `u64` count as `u64::MAX`.
pub fn parse_range(value: &str, len: u64) -> Ranges {
    let Some((unit, set)) = value.trim_matches([' ', '\t']).split_once('=') else {
        return Ranges::Ignore;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return Ranges::Ignore;
    }
    let mut members = 0;
    let mut satisfiable = Vec::new();
    for member in set
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
    {
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > MAX_RANGES {
            return Ranges::Ignore;
        }
        let Some(spec) = parse_spec(member) else {
            return Ranges::Ignore;
        };
        satisfiable.extend(spec.resolve(len));
    }
    // An empty representation has no byte to address: its whole (empty)
    // 200 answers any range.
    if members == 0 || len == 0 {
        return Ranges::Ignore;
    }
    match *satisfiable.as_slice() {
        [] => Ranges::Unsatisfiable,
        [one] => Ranges::One(one),
        _ => Ranges::Several(satisfiable),
    }
}

/// One `int-range` (`first-last`, `first-`) or `suffix-range` (`-length`).
fn parse_spec(member: &str) -> Option<Spec> {
    let (first, last) = member.split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(decimal(last)?));
    }
    let first = decimal(first)?;
    let last = match last {
        "" => None,
        last => Some(decimal(last)?),
    };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

/// `1*DIGIT` as a number, saturating at `u64::MAX`.
fn decimal(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.bytes().fold(0u64, |n, digit| {
        n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
    }))
}

/// Whether the `If-Range` value `value` names the representation whose
/// headers are `stored` (RFC 9110 §13.1.5), so its `Range` may be honoured:
///
/// - an entity-tag must be strong and equal the stored strong `ETag` (a weak
///   tag on either side never matches);
/// - an HTTP-date must equal the stored `Last-Modified` exactly, and that
///   date must be strong: the stored `Date` at least one second after it
///   (§8.8.2.2), so the representation could not change within its second.
///
/// Anything else (a malformed value, no stored validator) does not match.
pub fn if_range_matches(value: &str, stored: &HeaderMap) -> bool {
    let value = value.trim_matches([' ', '\t']);
    if value.starts_with('"') || value.starts_with("W/") {
        return match entity_tag_prefix(value) {
            Some((tag, "")) => stored_etag(stored).is_some_and(|current| tag.strong_eq(&current)),
            _ => false,
        };
    }
    let (Some(date), Some(modified), Some(sent)) = (
        parse_http_date(value),
        header_date(stored, &header::LAST_MODIFIED),
        header_date(stored, &header::DATE),
    ) else {
        return false;
    };
    date == modified
        && sent
            .duration_since(modified)
            .is_ok_and(|after| after >= Duration::from_secs(1))
}

/// What `request`'s `Range` asks of the representation with headers `stored`
/// and `len` bytes of content, `If-Range` considered: [`Ranges::Ignore`]
/// without exactly one `Range` line, or when an `If-Range` is present and is
/// not exactly one line that [`if_range_matches`]; else [`parse_range`].
pub fn requested_ranges(request: &HeaderMap, stored: &HeaderMap, len: u64) -> Ranges {
    let Some(range) = single_line(request, &header::RANGE) else {
        return Ranges::Ignore;
    };
    if request.contains_key(header::IF_RANGE)
        && !single_line(request, &header::IF_RANGE).is_some_and(|v| if_range_matches(v, stored))
    {
        return Ranges::Ignore;
    }
    parse_range(range, len)
}

/// The value of field `name` when it has exactly one line, and it is text.
fn single_line<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    let mut lines = headers.get_all(name).iter();
    match (lines.next(), lines.next()) {
        (Some(line), None) => line.to_str().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::headers;
    use http::header::HeaderValue;

    /// The RFC 9110 §14.1.2 examples' representation length.
    const LEN: u64 = 10_000;

    fn one(first: u64, last: u64) -> Ranges {
        Ranges::One(ByteRange { first, last })
    }

    #[test]
    fn the_rfcs_single_range_examples() {
        assert_eq!(parse_range("bytes=0-499", LEN), one(0, 499));
        assert_eq!(parse_range("bytes=500-999", LEN), one(500, 999));
        assert_eq!(parse_range("bytes=-500", LEN), one(9500, 9999));
        assert_eq!(parse_range("bytes=9500-", LEN), one(9500, 9999));
    }

    #[test]
    fn the_rfcs_multiple_range_examples() {
        let range = |first, last| ByteRange { first, last };
        assert_eq!(
            parse_range("bytes=0-0,-1", LEN),
            Ranges::Several(vec![range(0, 0), range(9999, 9999)])
        );
        assert_eq!(
            parse_range("bytes=500-600,601-999", LEN),
            Ranges::Several(vec![range(500, 600), range(601, 999)])
        );
        assert_eq!(
            parse_range("bytes=500-700,601-999", LEN),
            Ranges::Several(vec![range(500, 700), range(601, 999)])
        );
        assert_eq!(
            parse_range("bytes=0-999, 4500-5499, -1000", LEN),
            Ranges::Several(vec![range(0, 999), range(4500, 5499), range(9000, 9999)])
        );
    }

    #[test]
    fn open_ended_and_whole_ranges() {
        assert_eq!(parse_range("bytes=0-", LEN), one(0, 9999));
        assert_eq!(parse_range("bytes=9999-", LEN), one(9999, 9999));
        assert_eq!(parse_range("bytes=0-0", 1), one(0, 0));
    }

    #[test]
    fn last_positions_are_clamped_and_long_suffixes_are_the_whole() {
        assert_eq!(parse_range("bytes=9500-20000", LEN), one(9500, 9999));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", LEN),
            one(0, 9999)
        );
        assert_eq!(parse_range("bytes=-20000", LEN), one(0, 9999));
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", LEN),
            one(0, 9999)
        );
        assert_eq!(parse_range("bytes=-10000", LEN), one(0, 9999));
    }

    #[test]
    fn ranges_that_select_no_byte_are_unsatisfiable() {
        assert_eq!(parse_range("bytes=10000-", LEN), Ranges::Unsatisfiable);
        assert_eq!(parse_range("bytes=10000-10005", LEN), Ranges::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", LEN), Ranges::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", LEN),
            Ranges::Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=20000-30000, -0", LEN),
            Ranges::Unsatisfiable
        );
    }

    #[test]
    fn unsatisfiable_members_of_a_set_are_dropped() {
        assert_eq!(parse_range("bytes=0-499,10000-", LEN), one(0, 499));
        assert_eq!(parse_range("bytes=-0, 9000-", LEN), one(9000, 9999));
    }

    #[test]
    fn unit_is_case_insensitive_and_list_whitespace_and_empty_members_are_allowed() {
        assert_eq!(parse_range("Bytes=0-499", LEN), one(0, 499));
        assert_eq!(parse_range("BYTES=0-499", LEN), one(0, 499));
        assert_eq!(parse_range(" bytes=0-499\t", LEN), one(0, 499));
        assert_eq!(parse_range("bytes=, 0-499 ,,", LEN), one(0, 499));
    }

    #[test]
    fn malformed_ranges_are_ignored() {
        for value in [
            "",
            "bytes",
            "bytes=",
            "bytes= , ",
            "items=0-5",
            "bytes 0-5",
            "bytes =0-5",
            "bytes=5-1",
            "bytes=0-499,5-1",
            "bytes=-",
            "bytes=--5",
            "bytes=1-2-3",
            "bytes=x-",
            "bytes=0-y",
            "bytes=+1-2",
            "bytes=0 - 5",
            "bytes=0x10-",
            "bytes=½-",
            "bytes=0-499;q=1",
            "bytes=0-499,junk",
        ] {
            assert_eq!(parse_range(value, LEN), Ranges::Ignore, "{value:?}");
        }
    }

    #[test]
    fn more_than_max_ranges_members_are_ignored() {
        let members = |count: usize| {
            let set: Vec<String> = (0..count).map(|at| format!("{at}-{at}")).collect();
            format!("bytes={}", set.join(","))
        };
        match parse_range(&members(MAX_RANGES), LEN) {
            Ranges::Several(ranges) => assert_eq!(ranges.len(), MAX_RANGES),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_range(&members(MAX_RANGES + 1), LEN), Ranges::Ignore);
        let many = format!("bytes={}", "0-0,".repeat(100_000));
        assert_eq!(parse_range(&many, LEN), Ranges::Ignore);
    }

    #[test]
    fn an_empty_representation_is_served_whole() {
        assert_eq!(parse_range("bytes=0-", 0), Ranges::Ignore);
        assert_eq!(parse_range("bytes=-5", 0), Ranges::Ignore);
    }

    #[test]
    fn content_range_values() {
        let range = ByteRange {
            first: 0,
            last: 499,
        };
        assert_eq!(range.length(), 500);
        assert_eq!(range.content_range(LEN), "bytes 0-499/10000");
        assert_eq!(unsatisfied_content_range(LEN), "bytes */10000");
    }

    /// A stored representation with a strong `ETag` and a `Last-Modified`
    /// a day before its `Date`.
    fn stored() -> HeaderMap {
        headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sat, 05 Nov 1994 08:49:37 GMT"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ])
    }

    #[test]
    fn if_range_entity_tags_compare_strongly() {
        let stored = stored();
        assert!(if_range_matches("\"v1\"", &stored));
        assert!(if_range_matches(" \"v1\" ", &stored));
        assert!(!if_range_matches("\"v2\"", &stored));
        assert!(!if_range_matches("W/\"v1\"", &stored));
        assert!(!if_range_matches("\"v1\", \"v2\"", &stored));
        assert!(!if_range_matches("\"v1", &stored));
        assert!(!if_range_matches("*", &stored));
        assert!(!if_range_matches("", &stored));
        let weak = headers(&[("etag", "W/\"v1\"")]);
        assert!(!if_range_matches("\"v1\"", &weak));
        assert!(!if_range_matches("W/\"v1\"", &weak));
        assert!(!if_range_matches("\"v1\"", &HeaderMap::new()));
    }

    #[test]
    fn if_range_dates_must_equal_a_strong_last_modified() {
        let stored = stored();
        assert!(if_range_matches("Sat, 05 Nov 1994 08:49:37 GMT", &stored));
        assert!(if_range_matches(
            "Saturday, 05-Nov-94 08:49:37 GMT",
            &stored
        ));
        assert!(!if_range_matches("Sat, 05 Nov 1994 08:49:38 GMT", &stored));
        assert!(!if_range_matches("Sat, 05 Nov 1994 08:49:36 GMT", &stored));
        assert!(!if_range_matches("yesterday", &stored));
        // Modified within the second the response was sent: a weak date.
        let same_second = headers(&[
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!if_range_matches(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            &same_second
        ));
        let undated = headers(&[("last-modified", "Sat, 05 Nov 1994 08:49:37 GMT")]);
        assert!(!if_range_matches("Sat, 05 Nov 1994 08:49:37 GMT", &undated));
        let date_only = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(!if_range_matches(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            &date_only
        ));
    }

    #[test]
    fn requested_ranges_honours_range_only_when_if_range_matches() {
        let stored = stored();
        let ask = |pairs: &[(&'static str, &'static str)]| {
            requested_ranges(&headers(pairs), &stored, LEN)
        };
        assert_eq!(ask(&[]), Ranges::Ignore);
        assert_eq!(ask(&[("range", "bytes=0-9")]), one(0, 9));
        assert_eq!(
            ask(&[("range", "bytes=0-9"), ("if-range", "\"v1\"")]),
            one(0, 9)
        );
        assert_eq!(
            ask(&[("range", "bytes=0-9"), ("if-range", "\"v0\"")]),
            Ranges::Ignore
        );
        assert_eq!(
            ask(&[("range", "bytes=0-9"), ("if-range", "W/\"v1\"")]),
            Ranges::Ignore
        );
        assert_eq!(
            ask(&[
                ("range", "bytes=0-9"),
                ("if-range", "Sat, 05 Nov 1994 08:49:37 GMT")
            ]),
            one(0, 9)
        );
        assert_eq!(
            ask(&[
                ("range", "bytes=0-9"),
                ("if-range", "\"v1\""),
                ("if-range", "\"v1\"")
            ]),
            Ranges::Ignore
        );
        assert_eq!(
            ask(&[("range", "bytes=20000-"), ("if-range", "\"v1\"")]),
            Ranges::Unsatisfiable
        );
        // If-Range without Range is ignored.
        assert_eq!(ask(&[("if-range", "\"v1\"")]), Ranges::Ignore);
        // Range is a singleton field: two lines are invalid.
        assert_eq!(
            ask(&[("range", "bytes=0-9"), ("range", "bytes=10-19")]),
            Ranges::Ignore
        );
    }

    #[test]
    fn a_range_that_is_not_text_is_ignored() {
        let mut request = HeaderMap::new();
        request.insert(
            header::RANGE,
            HeaderValue::from_bytes(b"bytes=0-9\xff").unwrap(),
        );
        assert_eq!(
            requested_ranges(&request, &HeaderMap::new(), LEN),
            Ranges::Ignore
        );
    }
}
