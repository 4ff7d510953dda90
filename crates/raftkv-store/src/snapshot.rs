//! Snapshot files: the current snapshot of a node, kept on disk so that a restarted node can
//! serve it to lagging followers without rebuilding it.
//!
//! One file, `snapshot/current.snap` in the data dir, holding a codec envelope of
//! [`StoredSnapshot`]. It is replaced atomically: write a temporary file, fsync it, rename it over
//! the old one, fsync the directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::types::SnapshotMeta;

const FILE_NAME: &str = "current.snap";
const TMP_NAME: &str = "current.snap.tmp";

/// The snapshot body sent between nodes: the raw records of the state machine (user data and
/// replicated metadata such as the cluster id) except `last_applied` and `membership`, which
/// [`SnapshotMeta`] carries.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotPayload {
    pub records: Vec<Record>,
}

/// One state-machine record: a raw tree key and value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record(
    #[serde(with = "serde_bytes")] pub Vec<u8>,
    #[serde(with = "serde_bytes")] pub Vec<u8>,
);

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// Reads and writes a node's current snapshot file.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    pub fn new(dir: PathBuf) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        // A leftover temporary file is a write that never completed; the old snapshot stands.
        let tmp = dir.join(TMP_NAME);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    pub fn size_on_disk(&self) -> u64 {
        fs::metadata(self.path()).map(|m| m.len()).unwrap_or(0)
    }

    /// Atomically replaces the current snapshot.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let bytes = codec::encode(&StoredSnapshot {
            meta: meta.clone(),
            data: data.to_vec(),
        })?;
        let tmp = self.dir.join(TMP_NAME);
        let write = |path: &Path| -> std::io::Result<()> {
            let mut f = fs::File::create(path)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let dst = self.path();
        fs::rename(&tmp, &dst).map_err(|e| StoreError::io(&dst, e))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(&self.dir, e))?;
        Ok(())
    }

    /// Checks the current snapshot file's checksum without decoding it; returns its size (0
    /// when there is none).
    pub fn verify(&self) -> Result<usize, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        codec::verify(&bytes).map_err(|e| StoreError::Corrupt {
            what: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(bytes.len())
    }

    /// The current snapshot, if one was ever saved.
    pub fn load(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(|e| StoreError::Corrupt {
            what: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(Some((stored.meta, stored.data)))
    }
}
