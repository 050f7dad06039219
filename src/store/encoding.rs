//! What a reply store entry holds, byte for byte: a claim (a call for this request is
//! running, until its lease ends) or a reply (status, headers in order, body), so that a
//! reply served again is the one first published.
//!
//! Version 1, every integer big-endian or LEB128 (`varint`):
//!
//! ```text
//! claim: 0x01 0x00 lease_until_ms(u64)
//! reply: 0x01 0x01 status(u16) headers(varint) { name_len(varint) name value_len(varint) value }* body
//! ```
//!
//! The body is the rest of the entry, so it costs no length. An entry of another version
//! (a newer ricochet's) or one that does not decode is never served: the stage treats it
//! as absent and replaces it.

use bytes::Bytes;
use http::StatusCode;

use crate::message::{Reply, ReplyHeaders};

pub const VERSION: u8 = 1;
const CLAIM: u8 = 0;
const REPLY: u8 = 1;

/// One entry of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A delivery of this request is calling the service; its lease ends at this Unix time
    /// (milliseconds): the call's deadline plus the time to store its reply.
    Claim { lease_until_ms: u64 },
    /// The service's answer, as published.
    Reply(Reply),
}

/// Why an entry did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty entry")]
    Empty,
    #[error("entry version {0}, this ricochet reads version {VERSION}")]
    Version(u8),
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("the entry ends early")]
    Truncated,
    #[error("status {0} is not an HTTP status")]
    Status(u16),
    #[error("a header name is not UTF-8")]
    HeaderName,
    #[error("bytes after a claim")]
    Trailing,
}

pub fn encode_claim(lease_until_ms: u64) -> Bytes {
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&[VERSION, CLAIM]);
    out.extend_from_slice(&lease_until_ms.to_be_bytes());
    out.into()
}

/// The reply's stored form; its size is what the store's size limit is checked against.
pub fn encode_reply(reply: &Reply) -> Bytes {
    let headers: usize = (reply.headers.iter())
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(4 + 5 + headers + reply.body.len());
    out.extend_from_slice(&[VERSION, REPLY]);
    out.extend_from_slice(&reply.status.as_u16().to_be_bytes());
    varint(&mut out, reply.headers.len() as u64);
    for (name, value) in &reply.headers {
        varint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&reply.body);
    out.into()
}

/// Reads an entry; the reply's header values and body share `bytes`' buffer.
pub fn decode(bytes: &Bytes) -> Result<Entry, DecodeError> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.byte().map_err(|_| DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    match reader.byte()? {
        CLAIM => {
            let lease = u64::from_be_bytes(reader.array()?);
            match reader.at == bytes.len() {
                true => Ok(Entry::Claim {
                    lease_until_ms: lease,
                }),
                false => Err(DecodeError::Trailing),
            }
        }
        REPLY => {
            let code = u16::from_be_bytes(reader.array()?);
            let status = StatusCode::from_u16(code).map_err(|_| DecodeError::Status(code))?;
            let count = reader.varint()?;
            // Each header takes at least two bytes: a count beyond that is a lie.
            if count > (bytes.len() - reader.at) as u64 / 2 {
                return Err(DecodeError::Truncated);
            }
            let mut headers = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let name = reader.slice()?;
                let name = String::from_utf8(name.to_vec()).map_err(|_| DecodeError::HeaderName)?;
                let value = reader.slice()?;
                headers.push((name, value));
            }
            Ok(Entry::Reply(Reply {
                status,
                headers: headers.into_iter().collect::<ReplyHeaders>(),
                body: bytes.slice(reader.at..),
            }))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.bytes.get(self.at).ok_or(DecodeError::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.at.checked_add(N).ok_or(DecodeError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(slice.try_into().expect("N bytes"))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Truncated)
    }

    fn slice(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        let end = self.at.checked_add(len).ok_or(DecodeError::Truncated)?;
        if end > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let slice = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply(status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: headers.into_iter().collect(),
            body: body.into(),
        }
    }

    #[test]
    fn a_reply_comes_back_byte_for_byte_headers_in_order_repeats_kept() {
        let first = reply(
            201,
            vec![
                ("Set-Cookie".into(), b"a=1".to_vec()),
                ("X-Caf\u{e9}".into(), "caf\u{e9}".as_bytes().to_vec()),
                ("set-cookie".into(), vec![0xff, 0x00, b'\r']),
                ("Ricochet-Attempts".into(), b"2".to_vec()),
                ("Empty".into(), Vec::new()),
            ],
            vec![0, 1, 2, 0xff],
        );
        let stored = encode_reply(&first);
        assert_eq!(decode(&stored), Ok(Entry::Reply(first)));
    }

    #[test]
    fn a_claim_comes_back_and_is_ten_bytes() {
        let stored = encode_claim(1_765_000_000_123);
        assert_eq!(stored.len(), 10);
        assert_eq!(
            decode(&stored),
            Ok(Entry::Claim {
                lease_until_ms: 1_765_000_000_123
            })
        );
    }

    #[test]
    fn the_encoding_is_compact() {
        let small = reply(200, vec![("A".into(), b"b".to_vec())], b"{}".to_vec());
        // version, kind, status, one header (1 + 1 + 1 + 1), body.
        assert_eq!(encode_reply(&small).len(), 2 + 2 + 1 + 4 + 2);
    }

    #[test]
    fn entries_it_cannot_read_are_refused_never_misread() {
        let good = encode_reply(&reply(
            200,
            vec![("A".into(), b"b".to_vec())],
            b"x".to_vec(),
        ));
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
        let mut newer = good.to_vec();
        newer[0] = 2;
        assert_eq!(decode(&newer.into()), Err(DecodeError::Version(2)));
        let mut kind = good.to_vec();
        kind[1] = 7;
        assert_eq!(decode(&kind.into()), Err(DecodeError::Kind(7)));
        let mut status = good.to_vec();
        status[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(decode(&status.into()), Err(DecodeError::Status(1000)));
        // Cut inside the header: never a shorter reply.
        for end in 2..8 {
            assert_eq!(
                decode(&good.slice(..end)),
                Err(DecodeError::Truncated),
                "{end}"
            );
        }
        let mut claim = encode_claim(5).to_vec();
        claim.push(0);
        assert_eq!(decode(&claim.into()), Err(DecodeError::Trailing));
        // A header count far beyond the bytes allocates nothing.
        let lying = Bytes::from_static(&[1, 1, 0, 200, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode(&lying), Err(DecodeError::Truncated));
    }

    fn any_reply() -> impl Strategy<Value = Reply> {
        let header = (
            "[A-Za-z0-9-]{0,20}",
            prop::collection::vec(any::<u8>(), 0..40),
        );
        (
            100u16..=999,
            prop::collection::vec(header, 0..12),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(status, headers, body)| reply(status, headers, body))
    }

    proptest! {
        #[test]
        fn every_reply_round_trips(first in any_reply()) {
            let stored = encode_reply(&first);
            prop_assert_eq!(decode(&stored), Ok(Entry::Reply(first)));
        }

        #[test]
        fn every_claim_round_trips(lease in any::<u64>()) {
            prop_assert_eq!(decode(&encode_claim(lease)), Ok(Entry::Claim { lease_until_ms: lease }));
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
