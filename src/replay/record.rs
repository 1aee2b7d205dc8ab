//! A completed request's record: the origin's answer as a retry gets it
//! replayed, and the fingerprint of the request that produced it; with its
//! versioned wire form, so a store beyond this process (Redis) can hold it.
//!
//! A record never carries `Set-Cookie` (a session handed to one response must
//! not be handed again to whoever repeats the key) nor hop-by-hop fields:
//! [`Record::new`] removes them, so no caller can forget to.
//!
//! The wire form, version 1, all integers big-endian:
//!
//! ```text
//! "CIR" 0x01 | status u16 | fingerprint [32] | kept u8 (0|1)
//! | header count u32 | (name length u16, name, value length u32, value)*
//! | if kept: body length u32, body
//! ```
//!
//! Decoding checks every length and every name and value, and never panics:
//! a value that does not decode is a [`DecodeError`].

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::key::Fingerprint;
use crate::http::strip_hop_by_hop;

/// The first bytes of every encoded record: a tag and the format version.
const MAGIC: &[u8; 4] = b"CIR\x01";

/// `Set-Cookie2` (RFC 2965, obsolete), kept out of records like `Set-Cookie`.
static SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

/// The origin's answer to the request that claimed a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The origin's status.
    pub status: StatusCode,
    /// The origin's end-to-end header fields, without `Set-Cookie`.
    pub headers: HeaderMap,
    /// The origin's whole body; `None` when it was larger than the store
    /// keeps (the request happened, but its answer cannot be replayed).
    pub body: Option<Bytes>,
    /// The fingerprint of the request that produced this answer.
    pub fingerprint: Fingerprint,
}

/// Why an encoded record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a corral idempotency record (version 1): {0}")]
pub struct DecodeError(&'static str);

impl Record {
    /// The record of `status`, `headers` and `body` (`None`: not kept),
    /// answered to the request with `fingerprint`. `Set-Cookie`,
    /// `Set-Cookie2` and hop-by-hop fields are removed from `headers`.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Option<Bytes>,
        fingerprint: Fingerprint,
    ) -> Record {
        strip_hop_by_hop(&mut headers);
        headers.remove(header::SET_COOKIE);
        headers.remove(&SET_COOKIE2);
        Record {
            status,
            headers,
            body,
            fingerprint,
        }
    }

    /// Bytes this record takes in the wire form (what a store is charged).
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| 2 + name.as_str().len() + 4 + value.len())
            .sum();
        let body = self.body.as_ref().map_or(0, |body| 4 + body.len());
        MAGIC.len() + 2 + 32 + 1 + 4 + headers + body
    }

    /// The wire form.
    ///
    /// # Errors
    /// [`EncodeError`] when a field is too large for it (a header name over
    /// 64 KiB, or a value or body over 4 GiB), which no limit corral applies
    /// lets through.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.push(u8::from(self.body.is_some()));
        let count = u32::try_from(self.headers.len()).map_err(|_| EncodeError)?;
        out.extend_from_slice(&count.to_be_bytes());
        for (name, value) in &self.headers {
            let name = name.as_str().as_bytes();
            let name_len = u16::try_from(name.len()).map_err(|_| EncodeError)?;
            out.extend_from_slice(&name_len.to_be_bytes());
            out.extend_from_slice(name);
            let value_len = u32::try_from(value.len()).map_err(|_| EncodeError)?;
            out.extend_from_slice(&value_len.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        if let Some(body) = &self.body {
            let body_len = u32::try_from(body.len()).map_err(|_| EncodeError)?;
            out.extend_from_slice(&body_len.to_be_bytes());
            out.extend_from_slice(body);
        }
        Ok(out)
    }

    /// Reads a record from its wire form.
    ///
    /// # Errors
    /// [`DecodeError`] for anything but one whole, valid version-1 record.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut input = Reader(bytes);
        if input.take(MAGIC.len())? != MAGIC {
            return Err(DecodeError("unknown tag or version"));
        }
        let status =
            StatusCode::from_u16(input.u16()?).map_err(|_| DecodeError("invalid status"))?;
        let fingerprint: [u8; 32] = input
            .take(32)?
            .try_into()
            .map_err(|_| DecodeError("short fingerprint"))?;
        let kept = match input.take(1)? {
            [0] => false,
            [1] => true,
            _ => return Err(DecodeError("invalid body flag")),
        };
        let count = input.u32()?;
        // Each field takes at least 6 bytes: a count beyond that is a lie.
        if u64::from(count) * 6 > input.0.len() as u64 {
            return Err(DecodeError("header count exceeds the record"));
        }
        let mut headers = HeaderMap::with_capacity(count as usize);
        for _ in 0..count {
            let name_len = usize::from(input.u16()?);
            let name = HeaderName::from_bytes(input.take(name_len)?)
                .map_err(|_| DecodeError("invalid header name"))?;
            let value_len = input.u32()? as usize;
            let value = HeaderValue::from_bytes(input.take(value_len)?)
                .map_err(|_| DecodeError("invalid header value"))?;
            headers.append(name, value);
        }
        let body = if kept {
            let body_len = input.u32()? as usize;
            Some(Bytes::copy_from_slice(input.take(body_len)?))
        } else {
            None
        };
        if !input.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Record {
            status,
            headers,
            body,
            fingerprint: Fingerprint::from_bytes(fingerprint),
        })
    }
}

/// A record with a field too large for the wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a record field is too large for the wire form")]
pub struct EncodeError;

/// A cursor over an encoded record that fails instead of reading past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.0.len() {
            return Err(DecodeError("truncated"));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: Option<&'static str>) -> Record {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        headers.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("session=secret"),
        );
        headers.insert("set-cookie2", HeaderValue::from_static("old=secret"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Record::new(
            StatusCode::CREATED,
            headers,
            body.map(|body| Bytes::from_static(body.as_bytes())),
            Fingerprint::from_bytes([7; 32]),
        )
    }

    #[test]
    fn a_record_never_keeps_set_cookie_or_hop_by_hop_fields() {
        let record = record(Some("{}"));
        assert!(!record.headers.contains_key(header::SET_COOKIE));
        assert!(!record.headers.contains_key("set-cookie2"));
        assert!(!record.headers.contains_key(header::CONNECTION));
        assert!(!record.headers.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(record.headers.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn records_survive_their_wire_form() {
        for body in [Some("{\"id\":1}"), Some(""), None] {
            let record = record(body);
            let encoded = record.encode().unwrap();
            assert_eq!(encoded.len(), record.encoded_len());
            assert_eq!(Record::decode(&encoded), Ok(record));
        }
    }

    #[test]
    fn anything_but_a_whole_record_is_refused_without_panicking() {
        let encoded = record(Some("body")).encode().unwrap();
        for len in 0..encoded.len() {
            assert!(
                Record::decode(&encoded[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut trailing = encoded.clone();
        trailing.push(0);
        assert!(Record::decode(&trailing).is_err());
        let mut other_version = encoded.clone();
        other_version[3] = 2;
        assert!(Record::decode(&other_version).is_err());
        let mut huge_count = encoded.clone();
        huge_count[39..43].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Record::decode(&huge_count).is_err());
        let mut bad_status = encoded;
        bad_status[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert!(Record::decode(&bad_status).is_err());
    }
}
