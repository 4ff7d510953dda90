//! raftkv-store: the replicated state of a raftkv node.
//!
//! It owns everything that is written to disk and nothing that talks to the network:
//! - [`types`]: the openraft `TypeConfig` and the aliases it fixes;
//! - [`command`]: the commands carried in the log and the replies `apply` gives;
//! - [`log_store`]: the Raft log and vote on sled ([`LogStore`]);
//! - [`state_machine`]: the key-value state on sled ([`StateMachineStore`], [`StateReader`]), one
//!   file per job: its on-disk layout, applying entries, reads, building and installing snapshots;
//! - [`sessions`]: client sessions that make retried writes apply once;
//! - [`recovery`]: new single-node clusters from a backup or a surviving node's data;
//! - [`codec`]: the versioned bincode envelope every stored or sent payload uses;
//! - [`durable`]: `DurableDb`, sled's flush made a real fsync; `snapshot`: the snapshot file;
//!   `error`: [`StoreError`].
//!
//! Where new storage goes: the Raft log's own write-ahead log beside [`log_store`] (a `wal/`
//! room); new applied state (watch history, leases) as files of [`state_machine`] next to its
//! `apply.rs`, with their keys in its `layout.rs`.
//!
//! A data directory holds `db/` (one sled database for log and state) and `snapshot/`.
//! [`open`] opens both and returns the parts openraft drives plus a [`StoreHandle`] the node
//! keeps for reads, status and start-up checks.

// openraft's storage traits fix `StorageError` (~224 bytes) as the error type; helpers return
// it too so `?` works across them. Errors are the cold path here.

pub mod codec;
pub mod command;
pub mod durable;
mod error;
pub mod log_store;
pub mod recovery;
pub mod sessions;
mod snapshot;
pub mod state_machine;
pub mod types;
pub mod wal;

use std::path::{Path, PathBuf};

pub use error::StoreError;

pub use log_store::LogStore;
pub use state_machine::history::{Event, EventKind, HistoryError, HistoryRead};
pub use state_machine::{prefix_end, LeaseInfo, RangeQuery, RangeResult, StateMachineStore, StateReader};
pub use types::{LogId, NodeAddr, NodeId, TypeConfig, Vote};

use crate::durable::DurableDb;
use crate::snapshot::SnapshotFiles;

/// Receives storage timings, so the node can export them as metrics without the store knowing
/// any metrics library. Every method has a do-nothing default.
pub trait StoreObserver: Send + Sync + 'static {
    /// One fsync of the database (log appends, votes, purges, snapshots) took `took`.
    fn fsync(&self, _took: std::time::Duration) {}
    /// One `apply` call of `entries` log entries took `took`.
    fn applied(&self, _entries: usize, _took: std::time::Duration) {}
    /// One group-commit fsync acknowledged `appends` `append` calls at once.
    fn log_flush_batch(&self, _appends: usize) {}
}

/// Most bytes of entries one AppendEntries carries (a single entry larger than this still goes
/// alone). openraft gives an AppendEntries one heartbeat interval to be sent, written by the
/// follower and answered.
pub const MAX_APPEND_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// The observer used when nobody asks for timings.
pub struct NoTimings;

impl StoreObserver for NoTimings {}

/// Storage tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// sled's page cache size. sled's own default is 1 GiB; raftkv keeps it modest.
    pub cache_capacity_bytes: u64,
    /// The Raft log's segment size, memory cache and I/O mode.
    pub wal: wal::WalOptions,
    /// Most revisions of changes kept in memory for watchers (`--watch-history`).
    pub watch_history_revisions: u64,
    /// Most bytes of keys and values that history holds.
    pub watch_history_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 * 1024 * 1024,
            wal: wal::WalOptions::default(),
            watch_history_revisions: 10_000,
            watch_history_bytes: 64 * 1024 * 1024,
        }
    }
}

/// An opened store: the two halves openraft takes ownership of, and a handle the node keeps.
pub struct Store {
    pub log_store: LogStore,
    pub state_machine: StateMachineStore,
    pub handle: StoreHandle,
}

/// What the node keeps of the store after handing the rest to openraft. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    db: DurableDb,
    dir: PathBuf,
    log: LogStore,
    snapshots: SnapshotFiles,
    reader: StateReader,
}

/// What a data directory holds, for start-up consistency checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    pub vote: Option<Vote>,
    pub last_log_id: Option<LogId>,
    pub last_purged: Option<LogId>,
    pub last_applied_index: u64,
    pub has_snapshot: bool,
    pub has_user_data: bool,
}

impl StoreSummary {
    /// Whether the node has Raft state: it has voted or holds log entries.
    pub fn has_raft_state(&self) -> bool {
        self.vote.is_some() || self.last_log_id.is_some() || self.last_purged.is_some()
    }

    /// Whether nothing at all has been stored yet.
    pub fn is_pristine(&self) -> bool {
        !self.has_raft_state() && self.last_applied_index == 0 && !self.has_snapshot && !self.has_user_data
    }
}

/// Checks the envelope checksum of every value in `tree`; a damaged one is `Corrupt`, named by
/// `describe(key)`. Returns how many values it checked.
pub(crate) fn verify_tree(tree: &sled::Tree, describe: impl Fn(&[u8]) -> String) -> Result<usize, StoreError> {
    let mut n = 0;
    for item in tree.iter() {
        let (key, bytes) = item?;
        codec::verify(&bytes).map_err(|e| StoreError::Corrupt {
            what: describe(&key),
            detail: e.to_string(),
        })?;
        n += 1;
    }
    Ok(n)
}

/// What [`StoreHandle::verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub log_entries: usize,
    pub state_records: usize,
    pub snapshot_bytes: usize,
}

/// How long [`open_sled`] waits for a previous user of the same database in this process to
/// let go of its file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled. A database closed a moment ago in this same process (a restart in tests, or an
/// embedder reopening) may still be locked while sled's background flusher winds down, so a
/// lock conflict is retried for up to [`LOCK_WAIT`]; another process holding it is reported.
pub(crate) fn open_sled(path: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::io(
                        path,
                        std::io::Error::other(format!("{e} (is another raftkvd using this data dir?)")),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// The data directory's folder for the Raft log.
pub const WAL_DIR: &str = "wal";

/// sled trees that held the Raft log before it moved to its own write-ahead log.
const OLD_LOG_TREES: [&str; 2] = ["raft_log", "raft_meta"];

/// Refuses a data directory whose Raft log is still in sled (written by raftkv before the
/// write-ahead log, 2026-12): it says how to move the data.
fn refuse_log_in_sled(dir: &Path, db: &sled::Db) -> Result<(), StoreError> {
    for name in OLD_LOG_TREES {
        if db.tree_names().iter().any(|t| t.as_ref() == name.as_bytes()) && !db.open_tree(name)?.is_empty() {
            return Err(StoreError::OldLayout {
                dir: dir.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Opens (creating if needed) the store in `dir`.
pub fn open(dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
    open_observed(dir, config, std::sync::Arc::new(NoTimings))
}

/// Like [`open`], reporting fsync and apply timings to `observer`.
pub fn open_observed(
    dir: &Path,
    config: &StoreConfig,
    observer: std::sync::Arc<dyn StoreObserver>,
) -> Result<Store, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let db = open_sled(&dir.join("db"), config.cache_capacity_bytes)?;
    refuse_log_in_sled(dir, &db)?;
    let db = DurableDb::new(db, &dir.join("db")).map_err(|e| StoreError::io(&dir.join("db"), e))?;
    let wal = wal::Wal::open(
        std::sync::Arc::new(wal::StdDisk),
        &dir.join(WAL_DIR),
        config.wal.clone(),
        observer.clone(),
    )?;
    let log_store = LogStore::new(wal);
    let snapshots = SnapshotFiles::new(dir.join("snapshot"))?;
    let state_machine = StateMachineStore::open(&db, snapshots.clone(), observer, config)?;
    let handle = StoreHandle {
        db,
        dir: dir.to_path_buf(),
        log: log_store.clone(),
        snapshots,
        reader: state_machine.reader(),
    };
    Ok(Store {
        log_store,
        state_machine,
        handle,
    })
}

impl StoreHandle {
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk: the state database, the Raft log and the snapshot file.
    pub fn size_on_disk(&self) -> u64 {
        self.db.db().size_on_disk().unwrap_or(0) + self.log.wal().size_on_disk() + self.snapshots.size_on_disk()
    }

    /// Summarizes what the store holds.
    pub fn summary(&self) -> Result<StoreSummary, StoreError> {
        let sto = |e: types::StorageError| StoreError::Corrupt {
            what: "raft log metadata".into(),
            detail: e.to_string(),
        };
        Ok(StoreSummary {
            vote: self.log.vote().map_err(sto)?,
            last_log_id: self.log.last_entry_log_id().map_err(sto)?,
            last_purged: self.log.last_purged().map_err(sto)?,
            last_applied_index: self.reader.applied_index(),
            has_snapshot: self.snapshots.exists(),
            has_user_data: self.reader.has_user_data()?,
        })
    }

    /// Checks every stored payload's checksum: each log entry and log record, each state
    /// record, and the snapshot file. O(size of the store); run once at start. An error says
    /// which item, and in which file, is damaged.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let in_db = |e: StoreError| match e {
            StoreError::Corrupt { what, detail } => StoreError::Corrupt {
                what: format!("{what} in {}", self.dir.join("db").display()),
                detail,
            },
            other => other,
        };
        let log_entries = self.log.verify()?;
        let state_records = self.reader.verify().map_err(in_db)?;
        let snapshot_bytes = self.snapshots.verify()?;
        Ok(VerifyReport {
            log_entries,
            state_records,
            snapshot_bytes,
        })
    }

    /// Number of entries in the Raft log (O(n); for checks and tests).
    pub fn log_entry_count(&self) -> usize {
        self.log.entry_count()
    }

    /// Flushes everything to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Waits until every log write submitted so far is durable.
    pub async fn sync_log(&self) -> Result<(), StoreError> {
        let dir = self.dir.join(WAL_DIR);
        self.log.wal().sync().await.map_err(|e| StoreError::io(&dir, e))
    }
}
