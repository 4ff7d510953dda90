//! `LogStore`: the Raft log and vote on sled, keeping openraft's durability contract.
//!
//! Layout: tree `raft_log` maps the log index as a big-endian u64 (so byte order is numeric
//! order) to a codec-encoded [`Entry`]; tree `raft_meta` holds `vote`, `last_purged` and
//! `committed`.
//!
//! The contract (see docs/architecture.md, "Durability"):
//! - `save_vote` returns only after the vote is fsynced;
//! - `append` makes entries readable before it returns and calls openraft's flushed-callback
//!   only after an fsync covering them (group commit: see [`GroupCommitter`]);
//! - `purge` persists `last_purged` before deleting entries, so there is never a hole;
//! - `truncate` removes the tail in one atomic batch.
//!
//! Every call's writes reach sled before openraft issues the next call, so vote and log writes
//! keep their submission order; sled recovers a prefix of its writes after a crash, so an fsync
//! that covers an entry covers everything written before it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use std::sync::Arc;
use std::time::Instant;

use crate::codec;
use crate::durable::DurableDb;
use crate::error::StoreError;
use crate::types::{storage_error, Entry, LogId, LogState, StorageError, TypeConfig, Vote};
use crate::StoreObserver;

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

pub(crate) const LOG_TREE: &str = "raft_log";
pub(crate) const META_TREE: &str = "raft_meta";

/// The Raft log and vote of one node. Cheap to clone: all clones share one sled database.
#[derive(Clone)]
pub struct LogStore {
    db: DurableDb,
    log: sled::Tree,
    meta: sled::Tree,
    observer: Arc<dyn StoreObserver>,
    committer: GroupCommitter,
}

/// Group commit for appended entries: one fsync acknowledges every append written before it.
///
/// `append` writes its entries to sled and hands openraft's callback to a dedicated thread
/// instead of waiting for an fsync itself, so RaftCore goes on accepting writes while the disk
/// works. The thread takes every callback that is waiting, fsyncs once, and then completes them
/// in order. Under load this turns one fsync per client write into one per batch, without
/// acknowledging anything that is not on disk. When the last `LogStore` clone is dropped, the
/// thread completes what it holds and is joined, so the database is closed when the store is.
#[derive(Clone)]
struct GroupCommitter {
    inner: Arc<CommitterThread>,
}

struct CommitterThread {
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<IOFlushed<TypeConfig>>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for CommitterThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once it has completed what it holds.
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl GroupCommitter {
    fn start(db: DurableDb, observer: Arc<dyn StoreObserver>) -> std::io::Result<Self> {
        let (queue, waiting) = std::sync::mpsc::channel::<IOFlushed<TypeConfig>>();
        let thread = std::thread::Builder::new()
            .name("raftkv-log-flush".into())
            .spawn(move || {
                while let Ok(first) = waiting.recv() {
                    let mut batch = vec![first];
                    batch.extend(waiting.try_iter());
                    let started = Instant::now();
                    let result = db.flush();
                    observer.fsync(started.elapsed());
                    observer.log_flush_batch(batch.len());
                    for callback in batch {
                        callback.io_completed(
                            result
                                .as_ref()
                                .map_err(|e| std::io::Error::other(e.to_string()))
                                .copied(),
                        );
                    }
                }
            })?;
        Ok(Self {
            inner: Arc::new(CommitterThread {
                queue: std::sync::Mutex::new(Some(queue)),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    /// Queues `callback` for the next fsync; hands it back if the flush thread is gone.
    fn submit(&self, callback: IOFlushed<TypeConfig>) -> Result<(), IOFlushed<TypeConfig>> {
        match &*self.inner.queue.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(queue) => queue.send(callback).map_err(|e| e.0),
            None => Err(callback),
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a log key holds (a key of another length reads as its bytes' count: never a
/// valid index, and only used in messages).
fn index_of(key: &[u8]) -> u64 {
    <[u8; 8]>::try_from(key).map_or(key.len() as u64, u64::from_be_bytes)
}

/// What a storage error was about (openraft adds no more than "log I/O failed").
#[derive(Debug, Clone, Copy)]
enum Subject {
    Logs,
    Vote,
    Store,
}

fn io_err<E: std::fmt::Display>(subject: Subject, verb: &str, e: &E) -> StorageError {
    storage_error(&format!("{verb} {subject:?}"), e)
}

fn read_logs_err<E: std::fmt::Display>(e: &E) -> StorageError {
    io_err(Subject::Logs, "reading", e)
}

fn write_logs_err<E: std::fmt::Display>(e: &E) -> StorageError {
    io_err(Subject::Logs, "writing", e)
}

impl LogStore {
    pub(crate) fn open(db: &DurableDb, observer: Arc<dyn StoreObserver>) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            log: db.db().open_tree(LOG_TREE)?,
            meta: db.db().open_tree(META_TREE)?,
            committer: GroupCommitter::start(db.clone(), observer.clone())?,
            observer,
        })
    }

    /// fsyncs the whole database (sled flushes every tree at once), timing it.
    async fn flush(&self) -> Result<(), sled::Error> {
        let started = Instant::now();
        self.db.flush_async().await?;
        self.observer.fsync(started.elapsed());
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: Subject,
    ) -> Result<Option<T>, StorageError> {
        match self
            .meta
            .get(key)
            .map_err(|e| io_err(subject, "reading", &e))?
        {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|e| io_err(subject, "decoding", &e)),
        }
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: Subject,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| io_err(subject, "encoding", &e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(subject, "writing", &e))?;
        Ok(())
    }

    async fn fsync(&self, subject: Subject) -> Result<(), StorageError> {
        self.flush().await.map_err(|e| io_err(subject, "flushing", &e))
    }

    /// The last purged log id, if any.
    pub fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_LAST_PURGED, Subject::Logs)
    }

    /// The saved vote, if any (synchronous form of `read_vote`, for start-up checks).
    pub fn vote(&self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE, Subject::Vote)
    }

    /// Checks the checksum of every entry held (O(n), at start); an error names the entry.
    pub fn verify(&self) -> Result<usize, StoreError> {
        let entries = crate::verify_tree(&self.log, |key| format!("Raft log entry {}", index_of(key)))?;
        crate::verify_tree(&self.meta, |key| {
            format!("Raft log record {:?}", String::from_utf8_lossy(key))
        })?;
        Ok(entries)
    }

    /// Number of entries currently held in the log (O(n): for checks and tests, not hot paths).
    pub fn entry_count(&self) -> usize {
        self.log.len()
    }

    /// The log id of the last entry held, ignoring purges.
    pub fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last().map_err(|e| read_logs_err(&e))? {
            None => Ok(None),
            Some((_, bytes)) => {
                let entry: Entry = codec::decode(&bytes).map_err(|e| read_logs_err(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let iter = match range.end_bound() {
            Bound::Included(i) => self.log.range(index_key(start)..=index_key(*i)),
            Bound::Excluded(i) => {
                if *i <= start {
                    return Ok(Vec::new());
                }
                self.log.range(index_key(start)..index_key(*i))
            }
            Bound::Unbounded => self.log.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (_, bytes) = item.map_err(|e| read_logs_err(&e))?;
            entries.push(codec::decode(&bytes).map_err(|e| read_logs_err(&e))?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.vote()
    }

    /// The entries replication sends in one AppendEntries: `[start, end)`, cut off once they
    /// hold [`MAX_APPEND_BATCH_BYTES`](crate::MAX_APPEND_BATCH_BYTES) (at least one entry, so a
    /// large entry still goes alone).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in self.log.range(index_key(start)..index_key(end)) {
            let (_, value) = item.map_err(|e| read_logs_err(&e))?;
            if !entries.is_empty() && bytes + value.len() > crate::MAX_APPEND_BATCH_BYTES {
                break;
            }
            bytes += value.len();
            entries.push(codec::decode(&value).map_err(|e| read_logs_err(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, Subject::Vote)?;
        self.fsync(Subject::Vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: losing it only means re-learning the commit index from the
        // leader. The next append or vote flush makes it durable.
        self.write_meta(KEY_COMMITTED, &committed, Subject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED, Subject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| write_logs_err(&e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        // Readable on return...
        self.log.apply_batch(batch).map_err(|e| write_logs_err(&e))?;
        // ...durable before openraft is told so: the group committer calls back after an fsync
        // that covers these entries.
        if let Err(callback) = self.committer.submit(callback) {
            // The flush thread is gone (it never ends while a LogStore lives, but be safe).
            self.flush().await.map_err(|e| write_logs_err(&e))?;
            callback.io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_kept: Option<LogId>) -> Result<(), StorageError> {
        tracing::debug!(after = ?last_kept, "truncating log tail");
        // Keeps `last_kept` itself (openraft 0.10; 0.9's `truncate(id)` removed `id` too).
        let from = last_kept.map_or(0, |l| l.index + 1);
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(from)..) {
            let (key, _) = item.map_err(|e| read_logs_err(&e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs_err(&e))?;
        self.fsync(Subject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(upto = %log_id, "purging log head");
        // Record the purge point durably first: a crash half-way must not leave a hole that
        // get_log_state cannot explain.
        self.write_meta(KEY_LAST_PURGED, &log_id, Subject::Logs)?;
        self.fsync(Subject::Logs).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| read_logs_err(&e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs_err(&e))?;
        Ok(())
    }
}
