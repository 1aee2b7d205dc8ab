//! Validator grammar (RFC 9110 §8.8): entity-tags and the lists of them that
//! `If-None-Match` carries. HTTP-dates (`Last-Modified`, `If-Modified-Since`)
//! are read by [`super::date`], like every other date field. Pure grammar:
//! which validator applies when is `cache::policy`'s to decide.

use http::header::{self, HeaderMap};

/// An entity-tag (RFC 9110 §8.8.3), borrowed from a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    /// `W/` prefix: a weak validator.
    pub weak: bool,
    /// The opaque tag without its quotes.
    pub opaque: &'a str,
}

impl EntityTag<'_> {
    /// Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, weakness ignored.
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }

    /// Strong comparison: both strong and equal.
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }
}

fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

/// Parses one entity-tag at the start of `input`, returning it and the rest.
pub fn entity_tag_prefix(input: &str) -> Option<(EntityTag<'_>, &str)> {
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
pub fn stored_etag(headers: &HeaderMap) -> Option<EntityTag<'_>> {
    let value = headers.get(header::ETAG)?.to_str().ok()?.trim();
    match entity_tag_prefix(value)? {
        (tag, "") => Some(tag),
        _ => None,
    }
}

/// A comma-separated list of entity-tags; `None` if any member is malformed.
pub fn entity_tag_list(value: &str) -> Option<Vec<EntityTag<'_>>> {
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
