//! The wire form of a stored response: a self-contained, versioned binary
//! encoding, so an entry can live in a shared tier (Redis, a disk) and be
//! served and judged fresh by another process.
//!
//! # Format (version 1)
//!
//! All integers are big-endian. A *string* is a `u32` length followed by that
//! many bytes.
//!
//! | field                    | encoding                                                   |
//! |--------------------------|------------------------------------------------------------|
//! | magic                    | `b"CRL"`                                                   |
//! | version                  | `u8`, [`WIRE_VERSION`]                                     |
//! | `stored_at`              | `u64` milliseconds since `UNIX_EPOCH`                      |
//! | `initial_age`            | `u64` milliseconds                                         |
//! | `lifetime`               | `u64` milliseconds                                         |
//! | `stale_while_revalidate` | `u64` milliseconds                                         |
//! | `stale_if_error`         | `u64` milliseconds                                         |
//! | `status`                 | `u16`                                                      |
//! | headers                  | `u32` name count, then per name: name string, `u32` value count (at least 1), value strings in line order |
//! | body                     | `u64` length, then the bytes                               |
//! | variant                  | `u32` count, then per entry: name string, `u8` exact (0 or 1), `u32` value count, value strings |
//!
//! Nothing may follow the variant list.
//!
//! The encoding is canonical: names are lowercase, a header name appears in
//! one group only and every group has a value, so whatever [`decode`] accepts,
//! [`encode`] turns back into exactly the same bytes.
//!
//! Decoding never panics and never allocates more than the input could
//! describe: every length and count is checked against the bytes that remain
//! before anything is sliced or reserved. The decoded body and header values
//! are zero-copy slices of the input, so the input's whole buffer lives as
//! long as any of them does: hand [`decode`] a buffer holding just the entry
//! (not a slice of a larger read buffer) and this costs nothing extra.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Everything a stored response needs to be served and judged fresh by
/// another process.
///
/// Times and durations travel in whole milliseconds: [`encode`] truncates
/// anything finer, and saturates durations longer than `u64::MAX`
/// milliseconds. Header values' `is_sensitive` flag is not carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    /// Wall clock when the response arrived; must not precede `UNIX_EPOCH`.
    pub stored_at: SystemTime,
    /// Its age when it arrived (RFC 9111 `corrected_initial_age`).
    pub initial_age: Duration,
    /// Its freshness lifetime.
    pub lifetime: Duration,
    /// How long it may be served stale while it is revalidated.
    pub stale_while_revalidate: Duration,
    /// How long it may be served stale when the origin fails.
    pub stale_if_error: Duration,
    /// Its status.
    pub status: StatusCode,
    /// Its end-to-end headers; the order of the lines of each name survives.
    pub headers: HeaderMap,
    /// Its complete body.
    pub body: Bytes,
    /// The request header values the variant was chosen by, in order.
    pub variant: Vec<WireSelecting>,
}

/// One request header a variant was selected by, and the values it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireSelecting {
    /// The request header's name.
    pub name: HeaderName,
    /// Its lines, in order (empty when the request did not send it).
    pub values: Vec<HeaderValue>,
    /// Whether the values must match byte for byte, line by line.
    pub exact: bool,
}

/// The format version [`encode`] writes and the only one [`decode`] reads.
pub const WIRE_VERSION: u8 = 1;

/// The bytes every encoding starts with, ahead of the version.
const MAGIC: &[u8; 3] = b"CRL";

/// Smallest possible header group: name length, a one-byte name, value count
/// and one (empty) value.
const MIN_HEADER_GROUP: usize = 4 + 1 + 4 + 4;

/// Smallest possible variant entry: name length, a one-byte name, the exact
/// flag and a value count.
const MIN_SELECTING: usize = 4 + 1 + 1 + 4;

/// Smallest possible value: its length.
const MIN_VALUE: usize = 4;

/// Why an entry has no wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeWireError {
    /// A length or count does not fit its field (`u32`), or the whole
    /// encoding would not fit in memory.
    #[error("{what} is too large for the wire format")]
    TooLarge {
        /// Which length or count.
        what: &'static str,
    },
    /// `stored_at` precedes `UNIX_EPOCH` or lies beyond `u64::MAX`
    /// milliseconds after it.
    #[error("stored_at is out of range for the wire format")]
    StoredAtOutOfRange,
}

/// Why bytes are not the wire form of an entry. Every malformed input yields
/// one of these; none makes [`decode`] panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeWireError {
    /// The input is empty.
    #[error("empty wire entry")]
    Empty,
    /// The input does not start with the magic bytes: it is not a wire entry.
    #[error("not a wire entry (bad magic)")]
    BadMagic,
    /// The input was written in a version this build cannot read.
    #[error("unknown wire entry version {0}")]
    UnknownVersion(u8),
    /// The input ends before a field does, or a length or count claims more
    /// bytes than remain (a corrupt length lands here).
    #[error("wire entry truncated in {what}")]
    Truncated {
        /// The field that did not fit.
        what: &'static str,
    },
    /// A field holds a value it may not (a bad status, header name or value,
    /// flag, or a non-canonical layout).
    #[error("invalid {what} in wire entry")]
    Invalid {
        /// The offending field.
        what: &'static str,
    },
    /// Bytes follow the end of the entry.
    #[error("{0} trailing bytes after wire entry")]
    TrailingBytes(usize),
}

/// The exact length [`encode`] produces for `entry`.
///
/// # Errors
///
/// Exactly when [`encode`] fails, with the same error.
pub fn encoded_len(entry: &WireEntry) -> Result<usize, EncodeWireError> {
    let mut counter = Counter(0);
    emit(entry, &mut counter)?;
    // The counter saturates; an encoding that long could never be allocated.
    if counter.0 > isize::MAX as usize {
        return Err(EncodeWireError::TooLarge { what: "entry" });
    }
    Ok(counter.0)
}

/// Encodes `entry` in the current format ([`WIRE_VERSION`]), into a single
/// allocation of exactly the encoding's size (the length is computed first).
///
/// [`decode`] of the result yields `entry` again, up to the millisecond
/// truncation of times and durations described on [`WireEntry`].
///
/// # Errors
///
/// [`EncodeWireError::StoredAtOutOfRange`] for a `stored_at` before
/// `UNIX_EPOCH`; [`EncodeWireError::TooLarge`] when a header value, or the
/// number of lines of a name or of selecting headers, exceeds `u32::MAX`.
pub fn encode(entry: &WireEntry) -> Result<Bytes, EncodeWireError> {
    encode_buf(entry).map(BytesMut::freeze)
}

fn encode_buf(entry: &WireEntry) -> Result<BytesMut, EncodeWireError> {
    let len = encoded_len(entry)?;
    let mut buf = BytesMut::with_capacity(len);
    emit(entry, &mut buf)?;
    Ok(buf)
}

/// Decodes an entry written by [`encode`].
///
/// Never panics, whatever `bytes` holds, and allocates in proportion to
/// `bytes.len()` (a count is trusted only as far as the remaining input could
/// hold that many items). The body and header values share `bytes`'
/// buffer instead of copying it. Accepts only the canonical encoding, so
/// `encode(&decode(b)?) == b` for every accepted `b`.
///
/// # Errors
///
/// A [`DecodeWireError`] naming the first problem found.
pub fn decode(bytes: &Bytes) -> Result<WireEntry, DecodeWireError> {
    if bytes.is_empty() {
        return Err(DecodeWireError::Empty);
    }
    let seen = bytes.len().min(MAGIC.len());
    if bytes.get(..seen) != MAGIC.get(..seen) {
        return Err(DecodeWireError::BadMagic);
    }
    let mut r = Reader {
        input: bytes,
        pos: 0,
    };
    r.array::<3>("magic")?;
    let version = r.u8("version")?;
    if version != WIRE_VERSION {
        return Err(DecodeWireError::UnknownVersion(version));
    }

    let stored_at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(r.u64("stored_at")?))
        .ok_or(DecodeWireError::Invalid { what: "stored_at" })?;
    let initial_age = Duration::from_millis(r.u64("initial_age")?);
    let lifetime = Duration::from_millis(r.u64("lifetime")?);
    let stale_while_revalidate = Duration::from_millis(r.u64("stale_while_revalidate")?);
    let stale_if_error = Duration::from_millis(r.u64("stale_if_error")?);
    let status = StatusCode::from_u16(r.u16("status")?)
        .map_err(|_| DecodeWireError::Invalid { what: "status" })?;

    let names = r.count("header count", MIN_HEADER_GROUP)?;
    let mut headers =
        HeaderMap::try_with_capacity(names).map_err(|_| DecodeWireError::Invalid {
            what: "header count",
        })?;
    for _ in 0..names {
        let name = r.name("header name")?;
        if headers.contains_key(&name) {
            return Err(DecodeWireError::Invalid {
                what: "repeated header name",
            });
        }
        let lines = r.count("header value count", MIN_VALUE)?;
        if lines == 0 {
            return Err(DecodeWireError::Invalid {
                what: "header without values",
            });
        }
        for _ in 0..lines {
            let value = r.value("header value")?;
            headers
                .try_append(name.clone(), value)
                .map_err(|_| DecodeWireError::Invalid {
                    what: "header count",
                })?;
        }
    }

    let body_len = usize::try_from(r.u64("body length")?)
        .map_err(|_| DecodeWireError::Truncated { what: "body" })?;
    let body = r.bytes(body_len, "body")?;

    let selecting = r.count("variant count", MIN_SELECTING)?;
    let mut variant = Vec::with_capacity(selecting);
    for _ in 0..selecting {
        let name = r.name("variant name")?;
        let exact = match r.u8("variant exact flag")? {
            0 => false,
            1 => true,
            _ => {
                return Err(DecodeWireError::Invalid {
                    what: "variant exact flag",
                });
            }
        };
        let lines = r.count("variant value count", MIN_VALUE)?;
        let mut values = Vec::with_capacity(lines);
        for _ in 0..lines {
            values.push(r.value("variant value")?);
        }
        variant.push(WireSelecting {
            name,
            values,
            exact,
        });
    }

    match r.remaining() {
        0 => Ok(WireEntry {
            stored_at,
            initial_age,
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            status,
            headers,
            body,
            variant,
        }),
        extra => Err(DecodeWireError::TrailingBytes(extra)),
    }
}

/// Where [`emit`] writes: a counter (for the length) or the buffer itself, so
/// the length and the bytes come from one description of the layout.
trait Sink {
    fn bytes(&mut self, bytes: &[u8]);
}

/// Counts bytes, saturating.
struct Counter(usize);

impl Sink for Counter {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

impl Sink for BytesMut {
    fn bytes(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

fn emit(entry: &WireEntry, sink: &mut impl Sink) -> Result<(), EncodeWireError> {
    sink.bytes(MAGIC);
    sink.bytes(&[WIRE_VERSION]);
    let stored_at = entry
        .stored_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| EncodeWireError::StoredAtOutOfRange)?;
    let stored_at =
        u64::try_from(stored_at.as_millis()).map_err(|_| EncodeWireError::StoredAtOutOfRange)?;
    sink.bytes(&stored_at.to_be_bytes());
    for duration in [
        entry.initial_age,
        entry.lifetime,
        entry.stale_while_revalidate,
        entry.stale_if_error,
    ] {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        sink.bytes(&millis.to_be_bytes());
    }
    sink.bytes(&entry.status.as_u16().to_be_bytes());

    emit_count(sink, entry.headers.keys_len(), "header count")?;
    for name in entry.headers.keys() {
        emit_string(sink, name.as_str().as_bytes(), "header name")?;
        let values = entry.headers.get_all(name);
        emit_count(sink, values.iter().count(), "header value count")?;
        for value in values {
            emit_string(sink, value.as_bytes(), "header value")?;
        }
    }

    let body_len =
        u64::try_from(entry.body.len()).map_err(|_| EncodeWireError::TooLarge { what: "body" })?;
    sink.bytes(&body_len.to_be_bytes());
    sink.bytes(&entry.body);

    emit_count(sink, entry.variant.len(), "variant count")?;
    for selecting in &entry.variant {
        emit_string(sink, selecting.name.as_str().as_bytes(), "variant name")?;
        sink.bytes(&[u8::from(selecting.exact)]);
        emit_count(sink, selecting.values.len(), "variant value count")?;
        for value in &selecting.values {
            emit_string(sink, value.as_bytes(), "variant value")?;
        }
    }
    Ok(())
}

fn emit_count(
    sink: &mut impl Sink,
    count: usize,
    what: &'static str,
) -> Result<(), EncodeWireError> {
    let count = u32::try_from(count).map_err(|_| EncodeWireError::TooLarge { what })?;
    sink.bytes(&count.to_be_bytes());
    Ok(())
}

fn emit_string(
    sink: &mut impl Sink,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), EncodeWireError> {
    emit_count(sink, bytes.len(), what)?;
    sink.bytes(bytes);
    Ok(())
}

/// A cursor over the input; every read is checked against what remains.
/// Invariant: `pos <= input.len()`.
struct Reader<'a> {
    input: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &[u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }

    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeWireError> {
        let (head, _) = self
            .rest()
            .split_first_chunk::<N>()
            .ok_or(DecodeWireError::Truncated { what })?;
        let head = *head;
        self.pos = self.pos.saturating_add(N);
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeWireError> {
        self.array::<1>(what).map(u8::from_be_bytes)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeWireError> {
        self.array::<2>(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeWireError> {
        self.array::<4>(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeWireError> {
        self.array::<8>(what).map(u64::from_be_bytes)
    }

    /// The next `len` bytes, as a zero-copy slice of the input.
    fn bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeWireError> {
        if len > self.remaining() {
            return Err(DecodeWireError::Truncated { what });
        }
        let start = self.pos;
        self.pos = start.saturating_add(len);
        Ok(self.input.slice(start..self.pos))
    }

    /// A count of items at least `min_item` bytes each; a count the remaining
    /// input cannot hold is refused before anything is reserved for it.
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize, DecodeWireError> {
        let count =
            usize::try_from(self.u32(what)?).map_err(|_| DecodeWireError::Truncated { what })?;
        if count > self.remaining() / min_item {
            return Err(DecodeWireError::Truncated { what });
        }
        Ok(count)
    }

    fn string(&mut self, what: &'static str) -> Result<Bytes, DecodeWireError> {
        let len =
            usize::try_from(self.u32(what)?).map_err(|_| DecodeWireError::Truncated { what })?;
        self.bytes(len, what)
    }

    /// A header name, which must already be in its canonical (lowercase) form.
    fn name(&mut self, what: &'static str) -> Result<HeaderName, DecodeWireError> {
        let raw = self.string(what)?;
        let name = HeaderName::from_bytes(&raw).map_err(|_| DecodeWireError::Invalid { what })?;
        if name.as_str().as_bytes() != raw.as_ref() {
            return Err(DecodeWireError::Invalid { what });
        }
        Ok(name)
    }

    fn value(&mut self, what: &'static str) -> Result<HeaderValue, DecodeWireError> {
        HeaderValue::from_maybe_shared(self.string(what)?)
            .map_err(|_| DecodeWireError::Invalid { what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "content-type",
        "set-cookie",
        "cache-control",
        "etag",
        "x-custom",
        "x-trace-id",
        "link",
        "vary",
    ];

    const SELECTING: &[&str] = &["accept-encoding", "accept-language", "cookie", "x-tenant"];

    fn random_value(rng: &mut fastrand::Rng) -> HeaderValue {
        let len = rng.usize(0..=40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.u8(0..10) {
                0 => b' ',
                1 => b'\t',
                2 => rng.u8(0x80..=0xff),
                _ => rng.u8(0x21..=0x7e),
            })
            .collect();
        HeaderValue::from_bytes(&bytes).unwrap()
    }

    fn random_duration(rng: &mut fastrand::Rng) -> Duration {
        Duration::from_millis(match rng.u8(0..8) {
            0 => 0,
            1 => u64::MAX,
            2 => rng.u64(..),
            _ => rng.u64(0..10_000_000),
        })
    }

    fn random_entry(rng: &mut fastrand::Rng) -> WireEntry {
        let mut headers = HeaderMap::new();
        for _ in 0..rng.usize(0..=8) {
            let name = HeaderName::from_static(NAMES[rng.usize(..NAMES.len())]);
            headers.append(name, random_value(rng));
        }
        let body_len = if rng.bool() { 0 } else { rng.usize(0..=4096) };
        let body: Vec<u8> = (0..body_len).map(|_| rng.u8(..)).collect();
        let variant = (0..rng.usize(0..=3))
            .map(|_| WireSelecting {
                name: HeaderName::from_static(SELECTING[rng.usize(..SELECTING.len())]),
                values: (0..rng.usize(0..=2)).map(|_| random_value(rng)).collect(),
                exact: rng.bool(),
            })
            .collect();
        let stored_at = match rng.u8(0..8) {
            0 => 0,
            1 => u64::MAX,
            _ => rng.u64(0..4_000_000_000_000),
        };
        WireEntry {
            stored_at: SystemTime::UNIX_EPOCH + Duration::from_millis(stored_at),
            initial_age: random_duration(rng),
            lifetime: random_duration(rng),
            stale_while_revalidate: random_duration(rng),
            stale_if_error: random_duration(rng),
            status: StatusCode::from_u16(rng.u16(100..=599)).unwrap(),
            headers,
            body: Bytes::from(body),
            variant,
        }
    }

    /// A fixed entry exercising every section.
    fn sample() -> WireEntry {
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("text/plain"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        WireEntry {
            stored_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            initial_age: Duration::from_secs(3),
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello, world"),
            variant: vec![
                WireSelecting {
                    name: HeaderName::from_static("accept-encoding"),
                    values: vec![HeaderValue::from_static("gzip")],
                    exact: false,
                },
                WireSelecting {
                    name: HeaderName::from_static("x-tenant"),
                    values: vec![],
                    exact: true,
                },
            ],
        }
    }

    /// An entry with no headers, body or variant, so fields sit at known
    /// offsets.
    fn bare() -> WireEntry {
        WireEntry {
            headers: HeaderMap::new(),
            body: Bytes::new(),
            variant: vec![],
            ..sample()
        }
    }

    /// Magic plus version.
    const PREAMBLE_LEN: usize = MAGIC.len() + 1;

    /// Offset of the header count: preamble, five u64s and the status.
    const HEADERS_AT: usize = PREAMBLE_LEN + 5 * 8 + 2;

    fn assert_same(a: &WireEntry, b: &WireEntry) {
        assert_eq!(a.stored_at, b.stored_at);
        assert_eq!(a.initial_age, b.initial_age);
        assert_eq!(a.lifetime, b.lifetime);
        assert_eq!(a.stale_while_revalidate, b.stale_while_revalidate);
        assert_eq!(a.stale_if_error, b.stale_if_error);
        assert_eq!(a.status, b.status);
        assert_eq!(a.headers.len(), b.headers.len());
        assert!(a.headers.keys().eq(b.headers.keys()), "header name order");
        for name in a.headers.keys() {
            assert!(
                a.headers.get_all(name).iter().eq(b.headers.get_all(name)),
                "lines of {name}"
            );
        }
        assert_eq!(a.body, b.body);
        assert_eq!(a.variant, b.variant);
        assert_eq!(a, b);
    }

    fn with_u32_at(encoded: &Bytes, at: usize, value: u32) -> Bytes {
        let mut bytes = encoded.to_vec();
        bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
        Bytes::from(bytes)
    }

    #[test]
    fn random_entries_round_trip() {
        let mut rng = fastrand::Rng::with_seed(0x00c0_22a1);
        for _ in 0..2_000 {
            let entry = random_entry(&mut rng);
            let encoded = encode(&entry).unwrap();
            assert_same(&decode(&encoded).unwrap(), &entry);
        }
    }

    #[test]
    fn encode_allocates_exactly_the_computed_length() {
        let mut rng = fastrand::Rng::with_seed(7);
        let entries = (0..200).map(|_| random_entry(&mut rng));
        for entry in entries.chain([sample(), bare()]) {
            let len = encoded_len(&entry).unwrap();
            let buf = encode_buf(&entry).unwrap();
            assert_eq!(buf.len(), len);
            assert_eq!(buf.capacity(), len);
            assert_eq!(encode(&entry).unwrap().len(), len);
        }
        assert_eq!(encoded_len(&bare()).unwrap(), HEADERS_AT + 4 + 8 + 4);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut rng = fastrand::Rng::with_seed(11);
        for entry in [sample(), bare(), random_entry(&mut rng)] {
            let encoded = encode(&entry).unwrap();
            for len in 0..encoded.len() {
                let prefix = encoded.slice(..len);
                assert!(decode(&prefix).is_err(), "prefix of {len} bytes decoded");
            }
            assert_eq!(decode(&Bytes::new()).unwrap_err(), DecodeWireError::Empty);
            assert_eq!(
                decode(&encoded.slice(..2)).unwrap_err(),
                DecodeWireError::Truncated { what: "magic" }
            );
        }
    }

    #[test]
    fn every_single_byte_corruption_is_an_error_or_a_canonical_entry() {
        let encoded = encode(&sample()).unwrap();
        let mut decoded = 0;
        for at in 0..encoded.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff, encoded[at] ^ 0x20] {
                let mut bytes = encoded.to_vec();
                bytes[at] = byte;
                let bytes = Bytes::from(bytes);
                if let Ok(entry) = decode(&bytes) {
                    // Whatever is accepted is canonical: it encodes back to
                    // exactly the same bytes.
                    assert_eq!(encode(&entry).unwrap(), bytes, "corruption at {at}");
                    decoded += 1;
                }
            }
        }
        // Corrupting a body byte, a time or a value still decodes.
        assert!(decoded > 0);
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(13);
        let encoded = encode(&sample()).unwrap();
        for _ in 0..5_000 {
            let mut bytes = encoded.to_vec();
            // Overwrite a random stretch with random bytes, and maybe cut it.
            let start = rng.usize(PREAMBLE_LEN..bytes.len());
            let end = rng.usize(start..=bytes.len());
            bytes[start..end].iter_mut().for_each(|b| *b = rng.u8(..));
            bytes.truncate(rng.usize(end.max(1)..=bytes.len()));
            let bytes = Bytes::from(bytes);
            if let Ok(entry) = decode(&bytes) {
                assert_eq!(encode(&entry).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        for version in [0, 2, 0xff] {
            bytes[MAGIC.len()] = version;
            assert_eq!(
                decode(&Bytes::from(bytes.clone())).unwrap_err(),
                DecodeWireError::UnknownVersion(version)
            );
        }
    }

    #[test]
    fn bad_magic_is_rejected() {
        for bytes in [&b"X"[..], b"CX", b"CRX\x01", b"crl\x01"] {
            assert_eq!(
                decode(&Bytes::copy_from_slice(bytes)).unwrap_err(),
                DecodeWireError::BadMagic
            );
        }
    }

    #[test]
    fn huge_lengths_are_truncated_without_allocating() {
        let truncated = |bytes: &Bytes, what: &'static str| {
            assert_eq!(
                decode(bytes).unwrap_err(),
                DecodeWireError::Truncated { what }
            );
        };
        // Header count, body length (u64) and variant count of a bare entry:
        // a count of u32::MAX variants would reserve ~200 GB if trusted.
        let bare = encode(&bare()).unwrap();
        truncated(&with_u32_at(&bare, HEADERS_AT, u32::MAX), "header count");
        let mut body = bare.to_vec();
        body[HEADERS_AT + 4..HEADERS_AT + 12].copy_from_slice(&u64::MAX.to_be_bytes());
        truncated(&Bytes::from(body), "body");
        truncated(
            &with_u32_at(&bare, bare.len() - 4, u32::MAX),
            "variant count",
        );

        // The first header's name length, value count and first value length,
        // then the value count of sample()'s last selecting header (the last
        // field of the encoding, as that header has no values).
        let sample = encode(&sample()).unwrap();
        let name = "content-type".len();
        truncated(
            &with_u32_at(&sample, HEADERS_AT + 4, u32::MAX),
            "header name",
        );
        truncated(
            &with_u32_at(&sample, HEADERS_AT + 8 + name, u32::MAX),
            "header value count",
        );
        truncated(
            &with_u32_at(&sample, HEADERS_AT + 12 + name, u32::MAX),
            "header value",
        );
        truncated(
            &with_u32_at(&sample, sample.len() - 4, u32::MAX),
            "variant value count",
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes.extend_from_slice(b"xyz");
        assert_eq!(
            decode(&Bytes::from(bytes)).unwrap_err(),
            DecodeWireError::TrailingBytes(3)
        );
    }

    #[test]
    fn invalid_fields_are_rejected() {
        let invalid = |bytes: Vec<u8>, what: &'static str| {
            assert_eq!(
                decode(&Bytes::from(bytes)).unwrap_err(),
                DecodeWireError::Invalid { what }
            );
        };
        let bare = encode(&bare()).unwrap().to_vec();
        for status in [0u16, 99, 1000, u16::MAX] {
            let mut bytes = bare.clone();
            bytes[HEADERS_AT - 2..HEADERS_AT].copy_from_slice(&status.to_be_bytes());
            invalid(bytes, "status");
        }

        // A bare entry with one hand-written header group spliced in.
        let with_headers = |groups: &[(&[u8], &[&[u8]])]| {
            let mut bytes = bare[..HEADERS_AT].to_vec();
            bytes.extend_from_slice(&(groups.len() as u32).to_be_bytes());
            for (name, values) in groups {
                bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
                bytes.extend_from_slice(name);
                bytes.extend_from_slice(&(values.len() as u32).to_be_bytes());
                for value in *values {
                    bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    bytes.extend_from_slice(value);
                }
            }
            bytes.extend_from_slice(&bare[HEADERS_AT + 4..]);
            bytes
        };
        assert!(decode(&Bytes::from(with_headers(&[(b"etag", &[b"\"x\""])]))).is_ok());
        invalid(with_headers(&[(b"ETag", &[b"x"])]), "header name");
        invalid(with_headers(&[(b"bad name", &[b"x"])]), "header name");
        invalid(with_headers(&[(b"", &[b"x"])]), "header name");
        invalid(with_headers(&[(b"etag", &[b"a\nb"])]), "header value");
        invalid(with_headers(&[(b"etag", &[b"\x7f"])]), "header value");
        invalid(with_headers(&[(b"etag", &[])]), "header without values");
        invalid(
            with_headers(&[(b"etag", &[b"a"]), (b"etag", &[b"b"])]),
            "repeated header name",
        );

        // The exact flag of the last selecting header (no values) of sample().
        let sample = encode(&sample()).unwrap().to_vec();
        let flag_at = sample.len() - 5;
        assert_eq!(sample[flag_at], 1);
        let mut bytes = sample;
        bytes[flag_at] = 2;
        invalid(bytes, "variant exact flag");
    }

    #[test]
    fn body_and_values_share_the_input() {
        let encoded = encode(&sample()).unwrap();
        let inside = |bytes: &[u8]| {
            let range = encoded.as_ptr_range();
            let ptrs = bytes.as_ptr_range();
            range.start <= ptrs.start && ptrs.end <= range.end
        };
        let entry = decode(&encoded).unwrap();
        assert!(inside(&entry.body));
        for value in entry.headers.values() {
            assert!(inside(value.as_bytes()));
        }
        for value in entry.variant.iter().flat_map(|s| &s.values) {
            assert!(inside(value.as_bytes()));
        }
    }

    #[test]
    fn times_travel_in_whole_milliseconds() {
        let entry = WireEntry {
            stored_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            initial_age: Duration::from_nanos(1_999_999),
            lifetime: Duration::MAX,
            ..sample()
        };
        let decoded = decode(&encode(&entry).unwrap()).unwrap();
        assert_eq!(
            decoded.stored_at,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!(decoded.initial_age, Duration::from_millis(1));
        assert_eq!(decoded.lifetime, Duration::from_millis(u64::MAX));
    }

    #[test]
    fn stored_at_before_the_epoch_is_refused() {
        let entry = WireEntry {
            stored_at: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            ..sample()
        };
        assert_eq!(encode(&entry), Err(EncodeWireError::StoredAtOutOfRange));
        assert_eq!(
            encoded_len(&entry),
            Err(EncodeWireError::StoredAtOutOfRange)
        );
    }
}
