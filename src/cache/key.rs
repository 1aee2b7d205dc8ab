//! The primary cache key: which stored responses a request may be answered
//! from, and which requests share one flight to the origin.
//!
//! # What the key holds, and why
//!
//! The key is what the origin sees, and nothing else (DESIGN invariant 10):
//!
//! - the **authority corral sends upstream**: the origin's own on a route
//!   that does not preserve `Host` (so a client's `Host` can neither poison
//!   nor bust the cache: the origin never sees it), or the client's validated,
//!   canonical host on a route that preserves it (and then only hosts the
//!   config lists are admitted, see `proxy::admission`);
//! - the **path and query**, verbatim, exactly as they are sent upstream.
//!
//! Request headers a route forwards on fills (`forward_headers`) select
//! between stored variants of one key, like a `Vary` the route always
//! declares (see [`crate::cache::Variant`]).
//!
//! # Encoding
//!
//! Each part is written as its byte length in decimal, a `:` and its bytes:
//! `13:shop.example:8010:/a/b?c=d`. A length prefix cannot be confused with
//! the part before it (that part's length is already consumed), so two
//! different (authority, path-and-query) pairs never encode to the same key,
//! whatever characters the parts hold. The seed joined host and path with
//! nothing between them, so `Host: h/admin` + `/z` and `Host: h` + `/admin/z`
//! shared a key: one client could store an answer under another URL.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;

/// An unambiguous encoding of the authority sent upstream and the path and
/// query: equal keys mean an equal (authority, path-and-query) pair.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Heap bytes the key takes (its text's allocation).
    pub fn heap_size(&self) -> usize {
        super::entry::malloc_chunk(self.0.capacity())
    }

    /// The key for a request sent upstream to `authority` (already canonical:
    /// lowercase host, see [`canonical_authority`]) for `path_and_query`.
    pub fn new(authority: &str, path_and_query: &str) -> CacheKey {
        let mut encoded = String::with_capacity(authority.len() + path_and_query.len() + 8);
        encode_into(&mut encoded, authority, path_and_query);
        CacheKey(encoded)
    }

    /// Runs `lookup` with the encoded form ([`CacheKey::as_str`]) of the key
    /// [`CacheKey::new`] would build, written into a buffer this thread
    /// reuses: a lookup that finds what it wants (a hit) allocates no key.
    pub fn with_encoded<R>(
        authority: &str,
        path_and_query: &str,
        lookup: impl FnOnce(&str) -> R,
    ) -> R {
        ENCODED.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut encoded) => {
                encoded.clear();
                encode_into(&mut encoded, authority, path_and_query);
                let found = lookup(&encoded);
                // A huge URL must not keep its buffer's memory per thread.
                if encoded.capacity() > MAX_KEPT_ENCODED {
                    *encoded = String::new();
                }
                found
            }
            // Only if `lookup` itself looks a key up this way.
            Err(_) => lookup(CacheKey::new(authority, path_and_query).as_str()),
        })
    }

    /// The key whose encoded form ([`CacheKey::as_str`]) is `encoded`, if it
    /// is one: exactly two length-prefixed parts and nothing after them. For
    /// keys read back from a shared tier's names.
    pub fn decode(encoded: &str) -> Option<CacheKey> {
        let (authority, rest) = split_part(encoded)?;
        let (path, tail) = split_part(rest)?;
        tail.is_empty()
            .then(|| CacheKey::new(authority, path))
            .filter(|key| key.0 == encoded)
    }

    /// The encoded key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The authority part.
    pub fn authority(&self) -> &str {
        self.parts().0
    }

    /// The path-and-query part, as sent upstream.
    pub fn path_and_query(&self) -> &str {
        self.parts().1
    }

    /// Both parts. A key is only ever built by [`CacheKey::new`], so decoding
    /// cannot fail; should it ever, the parts read as empty rather than panic.
    fn parts(&self) -> (&str, &str) {
        let text = self.0.as_str();
        split_part(text)
            .and_then(|(authority, rest)| {
                let (path, _) = split_part(rest)?;
                Some((authority, path))
            })
            .unwrap_or(("", ""))
    }
}

impl Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CacheKey({:?} {:?})",
            self.authority(),
            self.path_and_query()
        )
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.authority(), self.path_and_query())
    }
}

/// Capacity past which [`CacheKey::with_encoded`]'s buffer is let go.
const MAX_KEPT_ENCODED: usize = 4096;

thread_local! {
    static ENCODED: RefCell<String> = const { RefCell::new(String::new()) };
}

fn encode_into(encoded: &mut String, authority: &str, path_and_query: &str) {
    push_part(encoded, authority);
    push_part(encoded, path_and_query);
}

fn push_part(encoded: &mut String, part: &str) {
    encoded.push_str(itoa::Buffer::new().format(part.len()));
    encoded.push(':');
    encoded.push_str(part);
}

/// The first length-prefixed part of `text` and what follows it.
fn split_part(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
    let len: usize = text[..colon].parse().ok()?;
    let start = colon + 1;
    let end = start.checked_add(len)?;
    let part = text.get(start..end)?;
    Some((part, &text[end..]))
}

/// `authority` (a validated `host[:port]`) in the one spelling corral keys on
/// and sends upstream: the host lowercased (host names are case-insensitive,
/// RFC 3986 §3.2.2) and the default port 80 dropped, so one URL never takes
/// several keys. Borrows when it is canonical already.
pub fn canonical_authority(authority: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    // The port is what follows the last `:` after any bracketed IPv6 host.
    let host_end = authority.rfind(']').map_or(0, |at| at + 1);
    let (host, port) = match authority[host_end..].rfind(':') {
        Some(at) => authority.split_at(host_end + at),
        None => (authority, ""),
    };
    let lower = |text: &str| text.bytes().any(|b| b.is_ascii_uppercase());
    match port.strip_prefix(':').map(str::parse::<u16>) {
        // No port, or the default however written: the host alone.
        None | Some(Ok(80)) if !lower(host) => Cow::Borrowed(host),
        None | Some(Ok(80)) => Cow::Owned(host.to_ascii_lowercase()),
        // Any other port written the one way (`08080` is `8080`).
        Some(Ok(port)) => {
            let canonical = format!("{}:{port}", host.to_ascii_lowercase());
            if canonical == authority {
                Cow::Borrowed(authority)
            } else {
                Cow::Owned(canonical)
            }
        }
        // Not a port: admission refuses such hosts before they get here.
        Some(Err(_)) => Cow::Owned(authority.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_back_exactly_the_keys_new_builds() {
        let key = CacheKey::new("shop.example:8080", "/a/{b}?c=d:e");
        assert_eq!(CacheKey::decode(key.as_str()), Some(key.clone()));
        for junk in [
            "",
            "3:abc",
            "3:abc2:/",
            "3:abc1:/x",
            "x:abc1:/",
            "03:abc1:/",
        ] {
            assert_eq!(CacheKey::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_lookup_sees_the_key_new_builds_whatever_came_before() {
        let long = format!("/{}", "x".repeat(2 * MAX_KEPT_ENCODED));
        for (authority, path) in [
            ("shop.example:8080", "/a/b?c=d"),
            ("h", long.as_str()),
            ("shop.example", "/"),
        ] {
            let expected = CacheKey::new(authority, path);
            CacheKey::with_encoded(authority, path, |encoded| {
                assert_eq!(encoded, expected.as_str());
                // Nested, the outer buffer is busy: a key of its own.
                CacheKey::with_encoded("o", "/p", |inner| {
                    assert_eq!(inner, CacheKey::new("o", "/p").as_str());
                });
            });
        }
        ENCODED.with_borrow(|kept| assert!(kept.capacity() <= MAX_KEPT_ENCODED));
    }

    #[test]
    fn parts_read_back_what_went_in() {
        let key = CacheKey::new("shop.example:8080", "/a/b?c=d");
        assert_eq!(key.as_str(), "17:shop.example:80808:/a/b?c=d");
        assert_eq!(key.authority(), "shop.example:8080");
        assert_eq!(key.path_and_query(), "/a/b?c=d");
        assert_eq!(key.to_string(), "shop.example:8080/a/b?c=d");
    }

    #[test]
    fn host_with_a_path_cannot_take_another_urls_key() {
        // The seed's poisoning: `Host: h/admin` + `/z` collided with `h` + `/admin/z`.
        assert_ne!(
            CacheKey::new("127.0.0.1:8080/admin", "/z"),
            CacheKey::new("127.0.0.1:8080", "/admin/z")
        );
    }

    #[test]
    fn canonical_authority_lowercases_and_drops_the_default_port() {
        assert_eq!(canonical_authority("Shop.Example:80"), "shop.example");
        assert_eq!(canonical_authority("shop.example:080"), "shop.example");
        assert_eq!(
            canonical_authority("shop.example:08080"),
            "shop.example:8080"
        );
        assert_eq!(canonical_authority("[::1]:80"), "[::1]");
        assert_eq!(canonical_authority("[::1]"), "[::1]");
        assert_eq!(canonical_authority("[::1]:8080"), "[::1]:8080");
        assert_eq!(
            canonical_authority("shop.example:8080"),
            "shop.example:8080"
        );
        assert!(matches!(
            canonical_authority("shop.example"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Property: distinct (host, path, query) triples never share a key, and
    /// every key decodes to the request target it was built from. The
    /// alphabet is small and full of the characters an ambiguous encoding
    /// would trip on (digits, `:`, `/`, `?`), so collisions show up quickly.
    #[test]
    fn distinct_host_path_query_triples_never_share_a_key() {
        const ALPHABET: &[u8] = b"ab1:/0%@.";
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let random_part = |rng: &mut fastrand::Rng, extra: &[u8]| -> String {
            let len = rng.usize(0..6);
            (0..len)
                .map(|_| {
                    let pick = rng.usize(0..ALPHABET.len() + extra.len());
                    *ALPHABET
                        .get(pick)
                        .unwrap_or_else(|| &extra[pick - ALPHABET.len()])
                        as char
                })
                .collect()
        };
        type Triple = (String, String, Option<String>);
        let mut seen: std::collections::HashMap<CacheKey, Triple> =
            std::collections::HashMap::new();
        for _ in 0..200_000 {
            let host = random_part(&mut rng, b"?");
            let path = format!("/{}", random_part(&mut rng, b""));
            let query = rng.bool().then(|| random_part(&mut rng, b"?"));
            let target = match &query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let key = CacheKey::new(&host, &target);
            assert_eq!(key.authority(), host);
            assert_eq!(key.path_and_query(), target);
            let triple = (host, path, query);
            if let Some(earlier) = seen.insert(key.clone(), triple.clone()) {
                assert_eq!(earlier, triple, "two requests share {key:?}");
            }
        }
    }
}
