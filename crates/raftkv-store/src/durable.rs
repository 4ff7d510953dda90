//! `DurableDb`: sled's flush, followed by a real fsync.
//!
//! sled 0.34's `Db::flush` writes its buffers and waits for them with `sync_file_range`
//! (`pagecache/iobuf.rs`), which flushes neither the drive's volatile write cache nor the file's
//! metadata (its size, as the log grows); sled itself fsyncs only from its background flusher,
//! every 500 ms. That survives a process crash but not a power cut. Every flush raftkv's
//! durability contract relies on (appends, votes, purges, snapshots) goes through
//! [`DurableDb::flush`], which follows sled's flush with `fdatasync` of sled's data file,
//! through a second file descriptor on the same file.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// A sled database whose flushes reach the disk. Cheap to clone.
#[derive(Clone)]
pub struct DurableDb {
    db: sled::Db,
    data_file: Arc<File>,
}

impl DurableDb {
    /// Wraps `db`, opened at `db_dir` (sled keeps its data in the file `db` there).
    pub fn new(db: sled::Db, db_dir: &Path) -> std::io::Result<Self> {
        let data_file = File::open(db_dir.join("db"))?;
        Ok(Self {
            db,
            data_file: Arc::new(data_file),
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Writes everything written so far to disk and fsyncs it (blocking).
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }

    /// [`flush`](Self::flush) for async callers: sled's part runs on sled's threads.
    pub async fn flush_async(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await?;
        self.data_file.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_what_was_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let db = sled::Config::new().path(&path).open().expect("open");
            let durable = DurableDb::new(db.clone(), &path).expect("data file");
            db.insert(b"k", b"v").expect("insert");
            durable.flush().expect("flush");
        }
        // (sled's flusher thread may hold the file lock a moment after the drop.)
        let db = crate::open_sled(&path, 8 << 20).expect("reopen");
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_missing_data_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().temporary(true).open().expect("open");
        assert!(DurableDb::new(db, &dir.path().join("nowhere")).is_err());
    }
}
