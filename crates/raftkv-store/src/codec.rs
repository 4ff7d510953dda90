//! The one place raftkv turns its types into bytes and back.
//!
//! Every payload raftkv stores (log entries, votes, state-machine records, snapshots) or sends
//! between nodes is a *versioned envelope*: one format byte, then (format 2) a CRC-32 of the
//! body, little-endian, then a bincode 2 body (`config::standard()`, varint integers). The
//! checksum makes a flipped bit on disk or on the wire a loud [`CodecError::Checksum`] instead
//! of a silently different value. Format 1 (no checksum) is still read, for data written
//! before it existed. bincode is positional, so any change to a stored type's fields must bump
//! [`FORMAT_VERSION`] and teach [`decode`] the old layout; an unknown version is refused
//! loudly instead of being misread.
//!
//! Decoding never panics on bad input and never trusts a length prefix beyond
//! [`MAX_DECODE_BYTES`], so garbage from the disk or the network becomes a [`CodecError`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The envelope format written by this build.
pub const FORMAT_VERSION: u8 = 2;
/// The first format: no checksum. Read, never written.
const FORMAT_V1: u8 = 1;

/// Largest body [`decode`] accepts. Peer messages are capped below this by the transport.
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty payload: expected a format byte")]
    Empty,
    #[error("unsupported payload format version {found} (this build reads version {FORMAT_VERSION}); was the data written by a newer raftkv?")]
    UnsupportedVersion { found: u8 },
    #[error("malformed payload: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the bytes were damaged after they were written")]
    Checksum { stored: u32, computed: u32 },
    #[error("payload has {extra} trailing bytes after the value")]
    TrailingBytes { extra: usize },
    #[error("cannot encode payload: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes `value` into a versioned envelope.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    let crc = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks an envelope's format and checksum without decoding it (format 1 has no checksum to
/// check): the start-up scan of every stored payload.
pub fn verify(bytes: &[u8]) -> Result<(), CodecError> {
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_VERSION => {
            let (crc, body) = rest.split_at_checked(4).ok_or(CodecError::Empty)?;
            let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
            let computed = crc32fast::hash(body);
            if stored == computed {
                Ok(())
            } else {
                Err(CodecError::Checksum { stored, computed })
            }
        }
        FORMAT_V1 => Ok(()),
        found => Err(CodecError::UnsupportedVersion { found }),
    }
}

/// Decodes a versioned envelope written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    verify(bytes)?;
    let body = match bytes[0] {
        FORMAT_V1 => &bytes[1..],
        _ => &bytes[5..],
    };
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(value)
}

/// Appends the bare bincode body of `value` to `out`: no format byte, no checksum. Only for
/// payloads inside a container that versions and checksums them itself (the write-ahead log's
/// records).
pub fn encode_bare_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())?;
    Ok(())
}

/// Decodes a bare body written by [`encode_bare_into`].
pub fn decode_bare<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{ClientSession, Command, Request};

    fn sample_request() -> Request {
        Request {
            timestamp_ms: 1_764_115_200_000,
            session: Some(ClientSession {
                client_id: 7,
                seq: 42,
                acked_below: 40,
            }),
            command: Command::Put {
                key: b"k".to_vec(),
                value: vec![0xAB; 300],
                prev_kv: true,
            },
        }
    }

    #[test]
    fn request_round_trips() {
        let req = sample_request();
        let bytes = encode(&req).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: Request = decode(&bytes).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn openraft_entry_round_trips() {
        use crate::types::{Entry, LeaderId, LogId};
        use openraft::EntryPayload;
        let entry = Entry {
            log_id: LogId::new(LeaderId { term: 3, node_id: 2 }, 17),
            payload: EntryPayload::Normal(sample_request()),
        };
        let back: Entry = decode(&encode(&entry).unwrap()).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            EntryPayload::Normal(r) => assert_eq!(r, sample_request()),
            other => panic!("wrong payload: {other:?}"),
        }
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(matches!(decode::<Request>(&[]), Err(CodecError::Empty)));
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = encode(&sample_request()).unwrap();
        bytes[0] = 99;
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(CodecError::UnsupportedVersion { found: 99 })
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_a_checksum_error() {
        let bytes = encode(&sample_request()).unwrap();
        for i in 1..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(
                matches!(decode::<Request>(&damaged), Err(CodecError::Checksum { .. })),
                "byte {i}"
            );
        }
    }

    #[test]
    fn format_1_payloads_without_a_checksum_are_still_read() {
        let v2 = encode(&sample_request()).unwrap();
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&v2[5..]);
        assert_eq!(decode::<Request>(&v1).unwrap(), sample_request());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        // Trailing bytes under a valid checksum (a format-1 payload has none to check).
        let v2 = encode(&sample_request()).unwrap();
        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(&v2[5..]);
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic pseudo-random walk over many garbage inputs, including truncations of
        // a valid payload and huge length prefixes: every one must come back as Err or Ok, never
        // a panic or an attempt to allocate gigabytes.
        let valid = encode(&sample_request()).unwrap();
        for cut in 0..valid.len() {
            let _ = decode::<Request>(&valid[..cut]);
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..512usize {
            // Format 1 has no checksum, so the garbage reaches bincode itself.
            let mut buf = vec![FORMAT_V1];
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state as u8);
            }
            let _ = decode::<Request>(&buf);
            let _ = decode::<crate::types::Entry>(&buf);
            buf[0] = FORMAT_VERSION;
            let _ = decode::<Request>(&buf);
        }
        // A length prefix claiming u64::MAX bytes for the key.
        let mut huge = vec![FORMAT_V1, 0, 0, 0, 0];
        huge.extend_from_slice(&[0xFF; 9]);
        assert!(decode::<Request>(&huge).is_err());
    }
}
