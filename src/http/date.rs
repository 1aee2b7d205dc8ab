//! HTTP-date (RFC 9110 §5.6.7): the one parser every date field goes through
//! (`Date`, `Expires`, `Last-Modified`, `If-Modified-Since`).
//!
//! All three forms a recipient must accept are read, by `httpdate`:
//!
//! | form | example |
//! |---|---|
//! | IMF-fixdate | `Sun, 06 Nov 1994 08:49:37 GMT` |
//! | obsolete RFC 850 | `Sunday, 06-Nov-94 08:49:37 GMT` |
//! | obsolete asctime | `Sun Nov  6 08:49:37 1994` |
//!
//! The grammar spells day names, month names and `GMT` case-sensitively, and
//! `httpdate` matches them so; RFC 9111 §4.2 asks a cache to match dates
//! case-insensitively, so a value that does not parse as sent is tried once
//! more with those names in the case `httpdate` expects. Anything else (a
//! missing `GMT`, a day name that is not the date's, a day the month does not
//! have, trailing text) is invalid, and the caller decides what an invalid
//! date means for its field.

use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName};

/// Longer than any HTTP-date (the longest, an RFC 850 date on a Wednesday, is
/// 33 characters): a longer value is invalid without a second look.
const LONGEST_DATE: usize = 40;

/// The instant an HTTP-date names, in any of its three forms and in any case,
/// with optional whitespace around it; `None` when `value` is not one.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let value = value.trim_matches([' ', '\t']);
    if let Ok(at) = httpdate::parse_http_date(value) {
        return Some(at);
    }
    if value.len() > LONGEST_DATE || !value.is_ascii() {
        return None;
    }
    httpdate::parse_http_date(&canonical_case(value)).ok()
}

/// The date in the first line of field `name`, if there is one and it parses
/// ([`parse_http_date`]).
pub fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    parse_http_date(headers.get(name)?.to_str().ok()?)
}

/// `value` with every run of ASCII letters in the case `httpdate` matches:
/// `GMT` upper-cased, any other word (a day or month name) capitalised, so
/// `sun, 06 NOV 1994 08:49:37 gmt` reads `Sun, 06 Nov 1994 08:49:37 GMT`.
/// Words that are no such name stay invalid in any case.
fn canonical_case(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        out.push_str(&rest[..start]);
        let from_word = &rest[start..];
        let end = from_word
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(from_word.len());
        let (word, after) = from_word.split_at(end);
        if word.eq_ignore_ascii_case("gmt") {
            out.push_str("GMT");
        } else {
            for (at, c) in word.chars().enumerate() {
                out.push(if at == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                });
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, UNIX_EPOCH};

    use http::header::{self, HeaderValue};

    /// `Sun, 06 Nov 1994 08:49:37 GMT`, the RFC's example instant.
    fn rfc_example() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn the_rfcs_three_example_dates_name_the_same_instant() {
        for value in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(value), Some(rfc_example()), "{value:?}");
        }
    }

    #[test]
    fn day_and_month_names_and_gmt_match_in_any_case() {
        for value in [
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "sUn, 06 nOV 1994 08:49:37 Gmt",
            "sunday, 06-nov-94 08:49:37 gmt",
            "SUNDAY, 06-NOV-94 08:49:37 GMT",
            "sun nov  6 08:49:37 1994",
            "SUN NOV  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(value), Some(rfc_example()), "{value:?}");
        }
    }

    #[test]
    fn surrounding_whitespace_is_optional_whitespace() {
        assert_eq!(
            parse_http_date(" \tSun, 06 Nov 1994 08:49:37 GMT\t "),
            Some(rfc_example())
        );
    }

    #[test]
    fn malformed_dates_are_invalid() {
        for value in [
            "",
            " ",
            "0",
            "-1",
            "tomorrow",
            // Missing or another zone.
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sunday, 06-Nov-94 08:49:37",
            // A day name that is not the date's, or no day at all.
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sux, 06 Nov 1994 08:49:37 GMT",
            "Monday, 06-Nov-94 08:49:37 GMT",
            "Mon Nov  6 08:49:37 1994",
            "06 Nov 1994 08:49:37 GMT",
            // Days the month does not have.
            "Thu, 30 Feb 2023 00:00:00 GMT",
            "Wed, 32 Jan 2024 00:00:00 GMT",
            "Thu, 31 Apr 2024 00:00:00 GMT",
            // Out-of-range time of day, bad month.
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:37 GMT",
            "Sun, 06 Nob 1994 08:49:37 GMT",
            // Trailing junk.
            "Sun, 06 Nov 1994 08:49:37 GMT junk",
            "Sun, 06 Nov 1994 08:49:37 GMTx",
            "Sun, 06 Nov 1994 08:49:37 GMT,",
            "Sun Nov  6 08:49:37 1994 GMT",
            // Two dates.
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
            // Not ASCII.
            "Sün, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(value), None, "{value:?}");
        }
    }

    #[test]
    fn header_date_reads_the_first_line_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(header_date(&headers, &header::DATE), None);
        headers.append(
            header::DATE,
            HeaderValue::from_static("sun, 06 nov 1994 08:49:37 gmt"),
        );
        headers.append(header::DATE, HeaderValue::from_static("garbage"));
        assert_eq!(header_date(&headers, &header::DATE), Some(rfc_example()));
        let mut headers = HeaderMap::new();
        headers.append(header::DATE, HeaderValue::from_static("garbage"));
        headers.append(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(header_date(&headers, &header::DATE), None);
    }
}
