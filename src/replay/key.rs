//! What names an idempotent request and what its payload is: the
//! `Idempotency-Key` grammar, the record key (whose record this is) and the
//! fingerprint (what was asked), each a SHA-256 digest of an unambiguous
//! encoding of its parts.
//!
//! SHA-256 rather than a std hasher: a fingerprint decides whether a retry is
//! the same request, and records of one route are shared by every client with
//! the same credential, so two payloads must never be made to collide on
//! purpose; std's `SipHash` is keyed per process (so useless across a fleet)
//! and 64 bits wide.

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// The request header a client names its retried write with
/// (draft-ietf-httpapi-idempotency-key-header).
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header a replayed answer carries (`true`), as Stripe's does.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key accepted, in characters (after unescaping a string).
pub const MAX_KEY_LENGTH: usize = 255;

/// A valid `Idempotency-Key` value: an RFC 8941 sf-string's content or an
/// sf-token, 1 to [`MAX_KEY_LENGTH`] printable ASCII characters. `"abc"` and
/// `abc` name the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` field was refused (the client gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The field appeared more than once.
    #[error("more than one Idempotency-Key field")]
    Repeated,
    /// The value is neither an sf-string nor an sf-token (parameters included).
    #[error("the Idempotency-Key value is not an RFC 8941 string or token")]
    Malformed,
    /// The key is empty or longer than 255 characters.
    #[error("the Idempotency-Key value must be 1 to 255 characters")]
    Length,
}

impl IdempotencyKey {
    /// The request's key: `Ok(None)` when it carries no `Idempotency-Key`.
    ///
    /// # Errors
    /// [`KeyError`] when the field is repeated or its value is not a key.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, KeyError> {
        let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        IdempotencyKey::parse(value.as_bytes()).map(Some)
    }

    /// Reads one field value (RFC 8941 §4.2: surrounding spaces discarded).
    ///
    /// # Errors
    /// [`KeyError::Malformed`] for anything but one sf-string or sf-token
    /// without parameters; [`KeyError::Length`] for an empty or too long key.
    pub fn parse(value: &[u8]) -> Result<IdempotencyKey, KeyError> {
        let value = value.trim_ascii();
        let key = match value.split_first() {
            Some((b'"', rest)) => string_content(rest)?,
            Some((first, _)) if first.is_ascii_alphabetic() || *first == b'*' => {
                if !value
                    .iter()
                    .all(|b| is_tchar(*b) || matches!(b, b':' | b'/'))
                {
                    return Err(KeyError::Malformed);
                }
                String::from_utf8_lossy(value).into_owned()
            }
            // An empty field is no key at all; anything else is not a string or token.
            None => return Err(KeyError::Length),
            Some(_) => return Err(KeyError::Malformed),
        };
        if key.is_empty() || key.len() > MAX_KEY_LENGTH {
            return Err(KeyError::Length);
        }
        Ok(IdempotencyKey(key))
    }

    /// The key's characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The content of an sf-string whose opening quote has been read (RFC 8941
/// §4.2.5): printable ASCII, `\` escaping only `"` and `\`, and nothing after
/// the closing quote.
fn string_content(rest: &[u8]) -> Result<String, KeyError> {
    let mut content = String::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => content.push(char::from(escaped)),
                _ => return Err(KeyError::Malformed),
            },
            b'"' => {
                return if bytes.as_slice().is_empty() {
                    Ok(content)
                } else {
                    Err(KeyError::Malformed)
                };
            }
            0x20..=0x7e => content.push(char::from(byte)),
            _ => return Err(KeyError::Malformed),
        }
    }
    // No closing quote.
    Err(KeyError::Malformed)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A SHA-256 digest over length-prefixed fields under a domain tag: no two
/// different field lists encode alike, and digests of different kinds never
/// compare equal.
struct Fields(Sha256);

impl Fields {
    fn new(domain: &str) -> Fields {
        let mut fields = Fields(Sha256::new());
        fields.push(domain.as_bytes());
        fields
    }

    fn push(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// Who a record belongs to: a digest of the client's credential, so records
/// are never shared across credentials and no credential is ever stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credential([u8; 32]);

impl Credential {
    /// The credential of a request: every value of `identity` (the route's
    /// identity header) when given, else of `Authorization`. A request
    /// without one is anonymous, and shares its key space with every other
    /// anonymous client of the route.
    pub fn of(headers: &HeaderMap, identity: Option<&HeaderName>) -> Credential {
        let name = identity.unwrap_or(&header::AUTHORIZATION);
        let values: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        let mut fields = Fields::new("corral idempotency credential v1");
        fields.push(name.as_str().as_bytes());
        fields.push(&(values.len() as u64).to_be_bytes());
        for value in values {
            fields.push(value.as_bytes());
        }
        Credential(fields.finish())
    }
}

/// Which record a request reads or writes: the route, the credential, the
/// method, the path (without query) and the key, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey([u8; 32]);

impl RecordKey {
    /// The record key of a request with `key` on `route` (its name).
    pub fn new(
        route: &str,
        credential: &Credential,
        method: &Method,
        path: &str,
        key: &IdempotencyKey,
    ) -> RecordKey {
        let mut fields = Fields::new("corral idempotency record v1");
        fields.push(route.as_bytes());
        fields.push(&credential.0);
        fields.push(method.as_str().as_bytes());
        fields.push(path.as_bytes());
        fields.push(key.as_str().as_bytes());
        RecordKey(fields.finish())
    }

    /// Lower-case hex, for names outside this process (Redis keys).
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// What a request asked: method, path with query, content type and body,
/// hashed. A retry whose fingerprint differs from the record's is another
/// request reusing the key (422).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request (`content_type` as sent, if any).
    pub fn of(
        method: &Method,
        path_and_query: &str,
        content_type: Option<&HeaderValue>,
        body: &[u8],
    ) -> Fingerprint {
        let mut fields = Fields::new("corral idempotency fingerprint v1");
        fields.push(method.as_str().as_bytes());
        fields.push(path_and_query.as_bytes());
        match content_type {
            // Absent and empty must differ: a tag byte says which.
            Some(value) => {
                fields.push(b"1");
                fields.push(value.as_bytes());
            }
            None => fields.push(b"0"),
        }
        fields.push(body);
        Fingerprint(fields.finish())
    }

    /// The digest's bytes (for the wire form of records and claims).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The fingerprint whose bytes are `bytes`.
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<String, KeyError> {
        IdempotencyKey::parse(value.as_bytes()).map(|key| key.as_str().to_owned())
    }

    #[test]
    fn strings_and_tokens_of_1_to_255_characters_are_keys() {
        assert_eq!(
            parse(r#""8e03978e-40d5-43e8-bc93-6894a57f9324""#).as_deref(),
            Ok("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(parse("order-17:retry/2").as_deref(), Ok("order-17:retry/2"));
        assert_eq!(parse("*star").as_deref(), Ok("*star"));
        assert_eq!(parse("  \"a b\"  ").as_deref(), Ok("a b"));
        assert_eq!(parse(r#""q\"uote\\d""#).as_deref(), Ok(r#"q"uote\d"#));
        assert_eq!(
            parse("abc"),
            parse("\"abc\""),
            "a string and a token name the same key"
        );
        assert_eq!(parse(&"k".repeat(255)).map(|k| k.len()), Ok(255));
        let quoted = format!("\"{}\"", "k".repeat(255));
        assert_eq!(parse(&quoted).map(|k| k.len()), Ok(255));
    }

    #[test]
    fn anything_else_is_refused() {
        for malformed in [
            "\"unterminated",
            "\"a\"b",
            "\"a\";p=1",
            "tok;p=1",
            "a b",
            "8e03978e-40d5",
            "-dash",
            "\"bad\\escape\"",
            "\"tab\there\"",
            "\"é\"",
            "a,b",
            "?",
        ] {
            assert_eq!(parse(malformed), Err(KeyError::Malformed), "{malformed:?}");
        }
        for wrong_length in ["", "   ", "\"\""] {
            assert_eq!(
                parse(wrong_length),
                Err(KeyError::Length),
                "{wrong_length:?}"
            );
        }
        assert_eq!(parse(&"k".repeat(256)), Err(KeyError::Length));
        assert_eq!(
            parse(&format!("\"{}\"", "k".repeat(256))),
            Err(KeyError::Length)
        );
        assert_eq!(
            parse(&format!("\"{}\\\\\"", "k".repeat(254))).map(|k| k.len()),
            Ok(255),
            "the length counts unescaped characters"
        );
    }

    #[test]
    fn a_repeated_field_is_refused_and_an_absent_one_is_no_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(None));
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers).map(|k| k.map(|k| k.0)),
            Ok(Some("a".to_owned()))
        );
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Repeated)
        );
    }

    #[test]
    fn the_fingerprint_covers_method_target_content_type_and_body() {
        let json = HeaderValue::from_static("application/json");
        let base = Fingerprint::of(&Method::POST, "/orders?x=1", Some(&json), b"{}");
        assert_eq!(
            base,
            Fingerprint::of(&Method::POST, "/orders?x=1", Some(&json), b"{}")
        );
        let others = [
            Fingerprint::of(&Method::PATCH, "/orders?x=1", Some(&json), b"{}"),
            Fingerprint::of(&Method::POST, "/orders?x=2", Some(&json), b"{}"),
            Fingerprint::of(&Method::POST, "/orders?x=1", None, b"{}"),
            Fingerprint::of(
                &Method::POST,
                "/orders?x=1",
                Some(&HeaderValue::from_static("")),
                b"{}",
            ),
            Fingerprint::of(&Method::POST, "/orders?x=1", Some(&json), b"{ }"),
        ];
        for other in others {
            assert_ne!(base, other);
        }
        // Field boundaries are unambiguous: moving bytes between fields changes it.
        assert_ne!(
            Fingerprint::of(&Method::POST, "/ab", None, b"c"),
            Fingerprint::of(&Method::POST, "/a", None, b"bc")
        );
    }

    #[test]
    fn record_keys_differ_by_route_credential_method_path_and_key_never_by_query() {
        let key = IdempotencyKey::parse(b"k1").unwrap();
        let headers = |auth: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(auth));
            headers
        };
        let alice = Credential::of(&headers("Bearer alice"), None);
        let bob = Credential::of(&headers("Bearer bob"), None);
        let anonymous = Credential::of(&HeaderMap::new(), None);
        assert_ne!(alice, bob);
        assert_ne!(alice, anonymous);
        let tenant = HeaderName::from_static("x-tenant");
        assert_eq!(
            Credential::of(&headers("Bearer alice"), Some(&tenant)),
            Credential::of(&headers("Bearer bob"), Some(&tenant)),
            "with an identity header, Authorization is not the credential"
        );
        let base = RecordKey::new("orders", &alice, &Method::POST, "/orders", &key);
        assert_eq!(
            base,
            RecordKey::new("orders", &alice, &Method::POST, "/orders", &key)
        );
        let other_key = IdempotencyKey::parse(b"k2").unwrap();
        for other in [
            RecordKey::new("carts", &alice, &Method::POST, "/orders", &key),
            RecordKey::new("orders", &bob, &Method::POST, "/orders", &key),
            RecordKey::new("orders", &alice, &Method::PATCH, "/orders", &key),
            RecordKey::new("orders", &alice, &Method::POST, "/orders/1", &key),
            RecordKey::new("orders", &alice, &Method::POST, "/orders", &other_key),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base.hex().len(), 64);
        assert!(
            base.hex()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
