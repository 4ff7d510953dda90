//! The backup file format, shared by `raftkv backup` (which writes it) and `raftkvd restore`
//! (which reads it).
//!
//! ```text
//! "RAFTKVBK"            8 bytes, magic
//! version               1 byte (1)
//! meta length           u32, big-endian
//! meta                  BackupMeta, protobuf
//! data                  meta.size_bytes bytes: the snapshot, as the node streamed it
//! SHA-256               32 bytes, over everything before it
//! ```
//!
//! A file that is truncated, has trailing bytes, or whose checksum does not match is refused
//! with an error saying which.

use std::io::{Read, Write};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::v1::BackupMeta;

const MAGIC: &[u8; 8] = b"RAFTKVBK";
const VERSION: u8 = 1;
const DIGEST_LEN: usize = 32;

/// Why a backup file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a raftkv backup (bad magic bytes)")]
    NotABackup,
    #[error("backup format version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error("the backup is corrupt: its SHA-256 checksum does not match")]
    Checksum,
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The length of the backup file `meta` describes (header, metadata, data, checksum).
pub fn file_len(meta: &BackupMeta) -> u64 {
    (MAGIC.len() + 1 + 4 + meta.encoded_len() + DIGEST_LEN) as u64 + meta.size_bytes
}

/// Writes a backup file from its metadata and data, computing the checksum.
pub struct BackupWriter<W: Write> {
    out: W,
    hasher: Sha256,
    expected: u64,
    written: u64,
}

impl<W: Write> BackupWriter<W> {
    pub fn new(mut out: W, meta: &BackupMeta) -> Result<Self, BackupError> {
        let meta_bytes = meta.encode_to_vec();
        let len = u32::try_from(meta_bytes.len()).map_err(|_| BackupError::Corrupt("metadata too large".into()))?;
        let mut hasher = Sha256::new();
        for part in [&MAGIC[..], &[VERSION], &len.to_be_bytes(), &meta_bytes] {
            out.write_all(part)?;
            hasher.update(part);
        }
        Ok(Self {
            out,
            hasher,
            expected: meta.size_bytes,
            written: 0,
        })
    }

    pub fn write_data(&mut self, chunk: &[u8]) -> Result<(), BackupError> {
        self.written += chunk.len() as u64;
        if self.written > self.expected {
            return Err(BackupError::Corrupt(format!(
                "the node sent more data ({} bytes) than announced ({})",
                self.written, self.expected
            )));
        }
        self.out.write_all(chunk)?;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Writes the checksum; fails if less data was written than announced.
    pub fn finish(mut self) -> Result<W, BackupError> {
        if self.written != self.expected {
            return Err(BackupError::Truncated(format!(
                "the node sent {} of {} announced bytes",
                self.written, self.expected
            )));
        }
        let digest = self.hasher.finalize();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads and verifies a whole backup file: its metadata and data.
pub fn read_backup(mut input: impl Read) -> Result<(BackupMeta, Vec<u8>), BackupError> {
    let mut raw = Vec::new();
    input.read_to_end(&mut raw)?;
    if raw.len() < MAGIC.len() + 1 + 4 + DIGEST_LEN {
        if raw.len() >= MAGIC.len() && &raw[..MAGIC.len()] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        return Err(BackupError::Truncated(format!("only {} bytes", raw.len())));
    }
    if &raw[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let version = raw[MAGIC.len()];
    if version != VERSION {
        return Err(BackupError::Version(version));
    }
    let (body, digest) = raw.split_at(raw.len() - DIGEST_LEN);
    let mut pos = MAGIC.len() + 1;
    let meta_len = u32::from_be_bytes([body[pos], body[pos + 1], body[pos + 2], body[pos + 3]]) as usize;
    pos += 4;
    if body.len() < pos + meta_len {
        return Err(BackupError::Truncated("the metadata is cut short".into()));
    }
    let meta = BackupMeta::decode(&body[pos..pos + meta_len]).map_err(|e| BackupError::Corrupt(e.to_string()))?;
    pos += meta_len;
    let data_len = body.len() - pos;
    if (data_len as u64) != meta.size_bytes {
        // Either bytes are missing (truncated) or the checksum is wrong; say which is likelier.
        if Sha256::digest(body).as_slice() == digest {
            return Err(BackupError::Corrupt("data length disagrees with the metadata".into()));
        }
        return Err(BackupError::Truncated(format!(
            "{data_len} bytes of data where the metadata announces {}",
            meta.size_bytes
        )));
    }
    if Sha256::digest(body).as_slice() != digest {
        return Err(BackupError::Checksum);
    }
    Ok((meta, body[pos..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let data = vec![7u8; 5000];
        let meta = BackupMeta {
            cluster_id: 9,
            node_id: 1,
            last_index: 42,
            last_term: 3,
            size_bytes: data.len() as u64,
            created_ms: 1,
            padding: Vec::new(),
        };
        let mut w = BackupWriter::new(Vec::new(), &meta).unwrap();
        for chunk in data.chunks(1000) {
            w.write_data(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let (meta, data) = read_backup(&sample()[..]).unwrap();
        assert_eq!((meta.last_index, meta.last_term, data.len()), (42, 3, 5000));
    }

    #[test]
    fn every_kind_of_damage_is_refused_with_its_reason() {
        let good = sample();
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        assert!(matches!(read_backup(&flipped[..]), Err(BackupError::Checksum)));
        for cut in [good.len() - 1, good.len() - 100, 30, 5] {
            let err = read_backup(&good[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BackupError::Truncated(_) | BackupError::Checksum | BackupError::Corrupt(_)
                ),
                "cut at {cut}: {err}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(read_backup(&extra[..]).is_err());
        assert!(matches!(
            read_backup(&b"hello world, this is not a backup at all...."[..]),
            Err(BackupError::NotABackup)
        ));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(matches!(read_backup(&v2[..]), Err(BackupError::Version(2))));
    }

    #[test]
    fn file_len_is_the_length_written_and_padding_is_read_past() {
        let file = sample();
        let (mut meta, data) = read_backup(&file[..]).unwrap();
        assert_eq!(file_len(&meta), file.len() as u64);
        meta.padding = vec![0; 300];
        let mut w = BackupWriter::new(Vec::new(), &meta).unwrap();
        w.write_data(&data).unwrap();
        let padded = w.finish().unwrap();
        assert_eq!(file_len(&meta), padded.len() as u64);
        assert_eq!(read_backup(&padded[..]).unwrap(), (meta, data));
    }

    #[test]
    fn a_short_stream_is_caught_when_writing() {
        let meta = BackupMeta {
            size_bytes: 10,
            ..Default::default()
        };
        let mut w = BackupWriter::new(Vec::new(), &meta).unwrap();
        w.write_data(&[1, 2, 3]).unwrap();
        assert!(matches!(w.finish(), Err(BackupError::Truncated(_))));
        let mut w = BackupWriter::new(Vec::new(), &meta).unwrap();
        assert!(w.write_data(&[0; 11]).is_err());
    }
}
