//! Records to bytes and back (see [`crate::spool`]).
//!
//! # Format
//!
//! ```text
//!   plain:  [VERSION] [PLAIN]  postcard(record) crc32(the bytes before it, little-endian)
//!   sealed: [VERSION] [SEALED] nonce(12) AES-256-GCM(postcard(record), aad = the two header bytes)
//! ```
//!
//! * The version byte comes first so a later format can be told apart from
//!   this one (and refused by this build) instead of being misread.
//! * The flag byte says whether the rest is sealed. It is part of the
//!   associated data, so flipping it (or the version) breaks the tag: a sealed
//!   record cannot be passed off as a plain one by editing one byte.
//! * A plain record ends with the CRC-32 of everything before it (header and
//!   payload). A CRC-32 detects every error within 32 consecutive bits, so
//!   any one changed byte (or a truncated file) makes the record unreadable
//!   ([`CodecError::Checksum`]) instead of a different delivery carrying the
//!   trusted headers. It is a guard against a failing disk, not against
//!   someone who can write the spool: that is what `[spool] key` is for
//!   (a sealed record is authenticated by AES-GCM and needs no checksum).
//! * A fresh random 96-bit nonce per record: records are written once and
//!   never rewritten in place, so a random nonce per write never repeats in
//!   practice (2^-32 collision odds only after ~2^32 records under one key).
//! * The body is serialized as one byte string (`serde_bytes`), not as a
//!   sequence of `u8`, so a 1 MiB body costs a length and a copy.
//!
//! # Version 1 (before the checksum)
//!
//! Records written by earlier builds carry version [`LEGACY`] and are still
//! read: a sealed one is as authenticated as ever, and a plain one is read
//! without a checksum, as it was written. Refusing them would leave every
//! entry spooled before an upgrade (each already answered 202) undelivered;
//! the spool drains them as it always did, and every record written from
//! now on carries the checksum. A version-2 record whose version byte flips
//! to 1 is still refused: its trailing checksum makes it malformed as a
//! version-1 record.
//!
//! # Keys
//!
//! With a key configured, only sealed records are accepted: a plain record
//! found in a spool that has a key is refused ([`CodecError::PlainWithKey`]),
//! just like a sealed record without a key. So turning encryption on is an
//! explicit step (drain or move the old spool first), and a file dropped into
//! the spool directory by someone without the key is never delivered.
//!
//! Errors name what was wrong, never bytes of the record.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

use super::Record;

use crate::config::SpoolKey;

/// The format this build writes.
pub const VERSION: u8 = 2;
/// The format before plain records carried a checksum: still read.
pub const LEGACY: u8 = 1;
const PLAIN: u8 = 0;
const SEALED: u8 = 1;
const HEADER_LEN: usize = 2;
const NONCE_LEN: usize = 12;
const CRC_LEN: usize = 4;

/// Why bytes are not a record. No variant carries bytes of the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the header (and nonce, when sealed).
    #[error("spool record truncated")]
    Truncated,
    /// Written by another (newer) format.
    #[error("spool record has unknown format version {0}")]
    UnknownVersion(u8),
    /// The flag byte is neither plain nor sealed.
    #[error("spool record has unknown flag {0}")]
    UnknownFlag(u8),
    /// A sealed record and no `[spool] key`.
    #[error("spool record is sealed and no key is configured")]
    SealedWithoutKey,
    /// A plain record while a key is configured (see the module docs).
    #[error("spool record is not sealed but a key is configured")]
    PlainWithKey,
    /// Wrong key, or the sealed bytes were changed.
    #[error("spool record cannot be unsealed (wrong key or tampered)")]
    Unseal,
    /// The (unsealed) bytes do not deserialize as a record.
    #[error("spool record is malformed")]
    Malformed,
    /// A plain record whose checksum does not match its bytes (a flipped or
    /// lost byte on disk).
    #[error("spool record fails its checksum (damaged)")]
    Checksum,
}

/// What is serialized: [`Record`] with the byte fields as byte strings.
#[derive(Serialize)]
struct WireRef<'a> {
    route: &'a str,
    replay_id: &'a str,
    event_id: Option<&'a str>,
    event_type: Option<&'a str>,
    token: u64,
    spooled_at_ms: u64,
    live_since_ms: u64,
    #[serde(with = "serde_bytes")]
    head: &'a [u8],
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

/// What is deserialized (the owned twin of [`WireRef`]).
#[derive(Deserialize)]
struct Wire {
    route: String,
    replay_id: String,
    event_id: Option<String>,
    event_type: Option<String>,
    token: u64,
    spooled_at_ms: u64,
    live_since_ms: u64,
    #[serde(with = "serde_bytes")]
    head: Vec<u8>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

fn cipher(key: &SpoolKey) -> Aes256Gcm {
    Aes256Gcm::new(&key.0.into())
}

/// `record` as bytes: sealed with `key` when there is one.
pub fn encode(record: &Record, key: Option<&SpoolKey>) -> Vec<u8> {
    let wire = WireRef {
        route: &record.route,
        replay_id: &record.replay_id,
        event_id: record.event_id.as_deref(),
        event_type: record.event_type.as_deref(),
        token: record.token,
        spooled_at_ms: record.spooled_at_ms,
        live_since_ms: record.live_since_ms,
        head: &record.head,
        body: &record.body,
    };
    // Strings, integers and byte strings only: postcard cannot fail on them
    // (it fails only for types it does not support or a full fixed buffer).
    let plain = postcard::to_allocvec(&wire).expect("a record always serializes");
    match key {
        None => {
            let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + CRC_LEN);
            out.extend_from_slice(&[VERSION, PLAIN]);
            out.extend_from_slice(&plain);
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        }
        Some(key) => {
            let header = [VERSION, SEALED];
            let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
            // AES-GCM fails only past 64 GiB of plaintext; a record is bounded
            // by the proxy's body limit far below that.
            let sealed = cipher(key)
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &plain,
                        aad: &header,
                    },
                )
                .expect("a record is far below AES-GCM's length limit");
            let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
            out.extend_from_slice(&header);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            out
        }
    }
}

/// The record in `bytes`. A sealed record needs `key`; with a key only
/// sealed records are accepted (see the module docs).
pub fn decode(bytes: &[u8], key: Option<&SpoolKey>) -> Result<Record, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated);
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    if header[0] != VERSION && header[0] != LEGACY {
        return Err(CodecError::UnknownVersion(header[0]));
    }
    let plain;
    let payload: &[u8] = match (header[1], key) {
        (PLAIN, None) if header[0] == LEGACY => rest,
        (PLAIN, None) => {
            let Some(split) = rest.len().checked_sub(CRC_LEN) else {
                return Err(CodecError::Truncated);
            };
            let (payload, crc) = rest.split_at(split);
            let stored = u32::from_le_bytes(crc.try_into().expect("CRC_LEN bytes"));
            if crc32fast::hash(&bytes[..HEADER_LEN + split]) != stored {
                return Err(CodecError::Checksum);
            }
            payload
        }
        (PLAIN, Some(_)) => return Err(CodecError::PlainWithKey),
        (SEALED, None) => return Err(CodecError::SealedWithoutKey),
        (SEALED, Some(key)) => {
            if rest.len() < NONCE_LEN {
                return Err(CodecError::Truncated);
            }
            let (nonce, sealed) = rest.split_at(NONCE_LEN);
            plain = cipher(key)
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: header,
                    },
                )
                .map_err(|_| CodecError::Unseal)?;
            &plain
        }
        (flag, _) => return Err(CodecError::UnknownFlag(flag)),
    };
    // `take_from_bytes` and not `from_bytes`: trailing bytes are refused too.
    let (wire, tail): (Wire, _) =
        postcard::take_from_bytes(payload).map_err(|_| CodecError::Malformed)?;
    if !tail.is_empty() {
        return Err(CodecError::Malformed);
    }
    Ok(Record {
        route: wire.route,
        replay_id: wire.replay_id,
        event_id: wire.event_id,
        event_type: wire.event_type,
        token: wire.token,
        spooled_at_ms: wire.spooled_at_ms,
        live_since_ms: wire.live_since_ms,
        head: wire.head,
        body: wire.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: Vec<u8>) -> Record {
        Record {
            route: "/webhooks/persona".into(),
            replay_id: "evt_123".into(),
            event_id: Some("evt_123".into()),
            event_type: Some("inquiry.approved".into()),
            token: 0xdead_beef_cafe,
            spooled_at_ms: 1_700_000_000_000,
            live_since_ms: 1_700_000_000_500,
            // Not UTF-8: a head is bytes, not text.
            head: b"POST /webhooks/persona HTTP/1.1\r\nX-Odd: \xff\xfe\x00\r\n\r\n".to_vec(),
            body,
        }
    }

    fn key(b: u8) -> SpoolKey {
        SpoolKey([b; 32])
    }

    #[test]
    fn roundtrip_plain() {
        for body in [vec![], b"{\"data\":1}".to_vec(), vec![0xA5; 1 << 20]] {
            let r = record(body);
            let bytes = encode(&r, None);
            assert_eq!(bytes[..2], [VERSION, PLAIN]);
            assert_eq!(decode(&bytes, None).unwrap(), r);
        }
        let mut r = record(vec![1]);
        r.event_id = None;
        r.event_type = None;
        assert_eq!(decode(&encode(&r, None), None).unwrap(), r);
    }

    #[test]
    fn roundtrip_sealed() {
        let k = key(7);
        for body in [vec![], b"{\"data\":1}".to_vec(), vec![0xA5; 1 << 20]] {
            let r = record(body);
            let bytes = encode(&r, Some(&k));
            assert_eq!(bytes[..2], [VERSION, SEALED]);
            assert_eq!(decode(&bytes, Some(&k)).unwrap(), r);
        }
    }

    #[test]
    fn body_is_one_byte_string() {
        // serde_bytes: a 1 MiB body adds a few bytes of framing, not one per byte
        // (postcard writes a u8 as one byte either way; this guards the size).
        let r = record(vec![0xFF; 1 << 20]);
        let bytes = encode(&r, None);
        assert!(bytes.len() < r.size() as usize + 64, "{}", bytes.len());
    }

    #[test]
    fn sealed_bytes_do_not_contain_the_body() {
        let body = b"SECRET-PII-the-applicant-name-is-Jane-Doe".to_vec();
        let r = record(body.clone());
        let bytes = encode(&r, Some(&key(1)));
        assert!(!bytes.windows(body.len()).any(|w| w == body.as_slice()));
        assert!(!bytes.windows(7).any(|w| w == b"evt_123"));
        // Same record twice: different nonces, different bytes.
        assert_ne!(bytes, encode(&r, Some(&key(1))));
    }

    #[test]
    fn tampering_is_refused() {
        let k = key(3);
        let bytes = encode(&record(b"hello".to_vec()), Some(&k));
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            assert!(
                decode(&t, Some(&k)).is_err(),
                "byte {i} flipped and accepted"
            );
        }
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], Some(&k)),
            Err(CodecError::Unseal)
        );
        assert_eq!(decode(&bytes[..5], Some(&k)), Err(CodecError::Truncated));
    }

    #[test]
    fn wrong_key_missing_key_and_plain_with_key_are_refused() {
        let r = record(b"x".to_vec());
        let sealed = encode(&r, Some(&key(1)));
        assert_eq!(decode(&sealed, Some(&key(2))), Err(CodecError::Unseal));
        assert_eq!(decode(&sealed, None), Err(CodecError::SealedWithoutKey));
        let plain = encode(&r, None);
        assert_eq!(decode(&plain, Some(&key(1))), Err(CodecError::PlainWithKey));
    }

    #[test]
    fn bad_headers_and_trailing_bytes_are_refused() {
        assert_eq!(decode(&[], None), Err(CodecError::Truncated));
        assert_eq!(decode(&[VERSION], None), Err(CodecError::Truncated));
        assert_eq!(decode(&[9, 0, 0], None), Err(CodecError::UnknownVersion(9)));
        assert_eq!(
            decode(&[VERSION, 7, 0], None),
            Err(CodecError::UnknownFlag(7))
        );
        let mut plain = encode(&record(vec![]), None);
        plain.push(0);
        assert_eq!(decode(&plain, None), Err(CodecError::Checksum));
        assert_eq!(
            decode(&[VERSION, PLAIN, 0xff], None),
            Err(CodecError::Truncated)
        );
        // A checksum that matches bytes that are not a record.
        let mut junk = vec![VERSION, PLAIN, 0xff];
        junk.extend_from_slice(&crc32fast::hash(&junk).to_le_bytes());
        assert_eq!(decode(&junk, None), Err(CodecError::Malformed));
    }

    /// A version-1 plain record: what earlier builds wrote (no checksum).
    fn legacy_plain(r: &Record) -> Vec<u8> {
        let mut bytes = encode(r, None);
        bytes.truncate(bytes.len() - CRC_LEN);
        bytes[0] = LEGACY;
        bytes
    }

    /// A version-1 sealed record: what earlier builds wrote.
    fn legacy_sealed(r: &Record, k: &SpoolKey) -> Vec<u8> {
        let plain = encode(r, None);
        let payload = &plain[HEADER_LEN..plain.len() - CRC_LEN];
        let header = [LEGACY, SEALED];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher(k)
            .encrypt(
                &nonce,
                Payload {
                    msg: payload,
                    aad: &header,
                },
            )
            .unwrap();
        [&header[..], &nonce[..], &sealed[..]].concat()
    }

    #[test]
    fn every_flipped_byte_of_a_plain_record_is_refused() {
        for body in [vec![], b"{\"data\":{\"id\":\"evt_1\"}}".to_vec()] {
            let r = record(body);
            let bytes = encode(&r, None);
            assert_eq!(bytes[0], VERSION);
            for i in 0..bytes.len() {
                for mask in [0x01, 0x10, 0x80, 0xff] {
                    let mut t = bytes.clone();
                    t[i] ^= mask;
                    assert!(
                        decode(&t, None).is_err(),
                        "byte {i} ^ {mask:#04x} flipped and accepted"
                    );
                }
            }
            // Every truncation, and a byte more.
            for len in 0..bytes.len() {
                assert!(decode(&bytes[..len], None).is_err(), "truncated to {len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer, None).is_err());
        }
    }

    #[test]
    fn version_1_records_are_still_read() {
        let r = record(b"{\"data\":1}".to_vec());
        assert_eq!(decode(&legacy_plain(&r), None).unwrap(), r);
        let k = key(4);
        assert_eq!(decode(&legacy_sealed(&r, &k), Some(&k)).unwrap(), r);
        assert_eq!(
            decode(&legacy_sealed(&r, &k), Some(&key(5))),
            Err(CodecError::Unseal)
        );
        // A version-2 record passed off as version 1: its checksum is left
        // over as trailing bytes, so it is refused.
        let mut v2 = encode(&r, None);
        v2[0] = LEGACY;
        assert_eq!(decode(&v2, None), Err(CodecError::Malformed));
        let sealed = encode(&r, Some(&k));
        let mut t = sealed.clone();
        t[0] = LEGACY;
        assert_eq!(decode(&t, Some(&k)), Err(CodecError::Unseal));
    }

    #[test]
    fn errors_do_not_quote_the_record() {
        let r = record(b"very-secret-body".to_vec());
        let sealed = encode(&r, Some(&key(1)));
        for e in [
            decode(&sealed, Some(&key(2))).unwrap_err(),
            decode(&sealed, None).unwrap_err(),
            decode(&encode(&r, None), Some(&key(1))).unwrap_err(),
        ] {
            let text = format!("{e} {e:?}");
            assert!(!text.contains("secret"), "{text}");
        }
    }
}
