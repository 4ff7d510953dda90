//! `LogStore`: openraft's log storage on raftkv's own write-ahead log ([`crate::wal`]).
//!
//! The contract (see docs/architecture.md, "Durability"), kept by the WAL:
//! - `save_vote` returns only after the vote is durable, behind every append before it;
//! - `append` makes entries readable before it returns, returns without waiting for the disk,
//!   and calls openraft's flushed-callback from the WAL's I/O thread only after an `fdatasync`
//!   covering them (one for every append waiting: group commit);
//! - `truncate_after` and `purge` are durable when they return; `purge` records the purge
//!   point before deleting whole segments behind it, so there is never a hole.
//!
//! Replication reads recent entries from memory; a batch for one AppendEntries stops at
//! [`MAX_APPEND_BATCH_BYTES`](crate::MAX_APPEND_BATCH_BYTES).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::error::StoreError;
use crate::types::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};
use crate::wal::Wal;

/// The Raft log and vote of one node. Cheap to clone: clones share one log.
#[derive(Clone)]
pub struct LogStore {
    wal: Wal,
}

/// `range` as inclusive bounds, `None` when it is empty.
fn inclusive<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl LogStore {
    pub(crate) fn new(wal: Wal) -> Self {
        Self { wal }
    }

    /// The write-ahead log underneath.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The last purged log id, if any.
    pub fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.purged())
    }

    /// The saved vote, if any (synchronous form of `read_vote`, for start-up checks).
    pub fn vote(&self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.vote())
    }

    /// How many entries the log holds; opening it already checked and decoded every one.
    pub fn verify(&self) -> Result<usize, StoreError> {
        self.wal.verify()
    }

    /// Number of entries currently held in the log.
    pub fn entry_count(&self) -> usize {
        self.wal.entry_count()
    }

    /// The log id of the last entry held, ignoring purges.
    pub fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.last_entry_log_id())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        match inclusive(&range) {
            Some((start, end)) => self.wal.entries(start..=end, usize::MAX),
            None => Ok(Vec::new()),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.vote())
    }

    /// The entries replication sends in one AppendEntries: `[start, end)`, cut off once they
    /// hold [`MAX_APPEND_BATCH_BYTES`](crate::MAX_APPEND_BATCH_BYTES) (at least one entry, so
    /// a large entry still goes alone).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        if end <= start {
            return Ok(Vec::new());
        }
        self.wal.entries(start..=end - 1, crate::MAX_APPEND_BATCH_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.wal.purged(),
            last_log_id: self.wal.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.wal.save_vote(vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written lazily, once the entries it names are durable: losing it only means
        // re-learning the commit index from the leader.
        self.wal.save_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.committed())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Readable on return; the WAL's I/O thread calls back once an fsync covers them.
        self.wal
            .append(entries, Box::new(move |result| callback.io_completed(result)))
    }

    async fn truncate_after(&mut self, last_kept: Option<LogId>) -> Result<(), StorageError> {
        tracing::debug!(after = ?last_kept, "truncating log tail");
        self.wal.truncate_after(last_kept).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(upto = %log_id, "purging log head");
        self.wal.purge(log_id).await
    }
}
