//! `StoreError`: what can go wrong opening or reading the store outside openraft's traits
//! (which use openraft's own `StorageError`).

use std::path::Path;

use crate::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("data directory {dir} was written by an older raftkv, which kept the Raft log inside its sled database; this build keeps it in {dir}/wal. Move the data: with the old build, `raftkv backup FILE` from the running cluster; then, with this build, `raftkvd restore --from FILE --id N --data-dir NEW_DIR ...`, start that node, and add the others with empty data dirs (docs/operations.md, \"Upgrading to a new version\")")]
    OldLayout { dir: String },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
