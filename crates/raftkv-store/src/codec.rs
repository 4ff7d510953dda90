//! The one place raftkv turns its types into bytes and back.
//!
//! Every payload raftkv stores (log entries, votes, state-machine records, snapshots) or sends
//! between nodes is a *versioned envelope*: one format byte followed by a bincode 2 body
//! (`config::standard()`, varint integers). bincode is positional, so any change to a stored
//! type's fields must bump [`FORMAT_VERSION`] and teach [`decode`] the old layout; an unknown
//! version is refused loudly instead of being misread.
//!
//! Decoding never panics on bad input and never trusts a length prefix beyond
//! [`MAX_DECODE_BYTES`], so garbage from the disk or the network becomes a [`CodecError`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The envelope format written by this build.
pub const FORMAT_VERSION: u8 = 1;

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
    #[error("payload has {extra} trailing bytes after the value")]
    TrailingBytes { extra: usize },
    #[error("cannot encode payload: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes `value` into a versioned envelope.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes a versioned envelope written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes {
            extra: body.len() - used,
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
        use crate::types::{Entry, LogId};
        use openraft::{CommittedLeaderId, EntryPayload};
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 2), 17),
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
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&sample_request()).unwrap();
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
            let mut buf = vec![FORMAT_VERSION];
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state as u8);
            }
            let _ = decode::<Request>(&buf);
            let _ = decode::<crate::types::Entry>(&buf);
        }
        // A length prefix claiming u64::MAX bytes for the key.
        let mut huge = vec![FORMAT_VERSION, 0, 0, 0, 0];
        huge.extend_from_slice(&[0xFF; 9]);
        assert!(decode::<Request>(&huge).is_err());
    }
}
