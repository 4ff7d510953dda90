//! `StateMachineStore`: the applied key-value state on sled, and `StateReader`, the read-only
//! view the node's services use.
//!
//! ## Layout
//! The whole state lives in one sled tree, `sm_state.<generation>`:
//! - `d` + user key -> codec [`StoredValue`](layout::StoredValue) (value, create/mod revision, version);
//! - `m/last_applied`, `m/membership`, `m/cluster_id`, `m/revision` -> codec values;
//! - leases: `l/<id>` -> the lease, `k/<id><key>` -> one per attached key, `a/<key>` -> the
//!   key's lease (see `layout`; applied by `apply/lease`).
//!
//! Keeping data and metadata in one tree makes every `apply` a single `sled::Batch`, which sled
//! applies atomically: the data, `last_applied`, the revision and the membership can never
//! disagree after a crash. Tree `sm_control` holds `generation`, the number of the live state tree.
//!
//! ## Revisions
//! The store has a revision, a counter every change to the data bumps, like etcd's main
//! revision: each put; each delete that removes something (one revision for all the keys of a
//! range); each transaction that changes something (one revision for all its writes). Writes
//! merged into one log entry get consecutive revisions. A key's `mod_revision` and
//! `create_revision` are such revisions, and so is every reply's header revision, so a watcher
//! can resume exactly after the last change it saw. The counter is stored with the data in the
//! same batch and travels in snapshots; it is independent of the Raft log index.
//!
//! ## Snapshot install replaces the state wholesale
//! `install_snapshot` writes the snapshot into a fresh tree `sm_state.<generation + 1>`, fsyncs,
//! then flips `generation` with one insert and fsyncs again. A crash before the flip leaves the
//! old state (the half-written tree is dropped at the next open); after it, the new one. No key
//! of the old state can survive.
//!
//! ## Durability of applied state
//! `apply` does not fsync: every entry it applies is already durable in the log on a majority,
//! and sled recovers a consistent prefix, so after a crash openraft re-applies what the state
//! machine lost. What must never happen is purging log entries the state machine has not made
//! durable; so a snapshot (after which openraft purges) is only published after an fsync.
//!
//! ## Files
//! - this one: the store openraft drives ([`StateMachineStore`]), the state its parts share,
//!   opening (which drops stale state trees), and the `RaftStateMachine` impl, which hands each
//!   call to the file below that owns it;
//! - `layout`: tree names, record keys and the stored value encoding;
//! - `apply`: applying committed entries as one atomic batch;
//! - `reads`: [`StateReader`] and range queries;
//! - `snapshot_build`: building a snapshot while applies go on ([`StateSnapshotBuilder`]);
//! - `snapshot_install`: installing a snapshot by generation flip, and serving the current one.

mod apply;
pub mod history;
mod layout;
mod reads;
mod snapshot_build;
mod snapshot_install;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::ErrorVerb;

use crate::durable::DurableDb;
use crate::error::StoreError;
use crate::snapshot::SnapshotFiles;
use crate::types::{
    storage_error, LogId, Snapshot, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::StoreObserver;
use history::WatchHistory;
use layout::{
    read_record, state_tree_name, stored_revision, CONTROL_TREE, KEY_GENERATION, KEY_LAST_APPLIED, KEY_MEMBERSHIP,
    STATE_TREE_PREFIX,
};
use snapshot_build::SnapshotView;

pub(crate) use layout::KEY_CLUSTER_ID;
pub use reads::{prefix_end, LeaseInfo, RangeQuery, RangeResult, StateReader};
pub use snapshot_build::StateSnapshotBuilder;

fn sm_err<E: std::error::Error + 'static>(verb: ErrorVerb, e: &E) -> StorageError {
    storage_error(&format!("state machine {verb:?}"), e)
}

fn snapshot_err<E: std::error::Error + 'static>(verb: ErrorVerb, e: &E) -> StorageError {
    storage_error(&format!("snapshot {verb:?}"), e)
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    sm_err(ErrorVerb::Read, &e)
}

struct StateTree {
    generation: u64,
    tree: sled::Tree,
}

struct Shared {
    db: DurableDb,
    control: sled::Tree,
    state: RwLock<StateTree>,
    applied_index: AtomicU64,
    /// The store revision of the applied state (see "Revisions" above).
    revision: AtomicU64,
    /// Recent changes, for watchers; updated under the state's write lock with the state.
    history: Mutex<WatchHistory>,
    /// The store revision, for watchers waiting for the next change.
    revision_tx: tokio::sync::watch::Sender<u64>,
    cluster_id: AtomicU64,
    /// While a snapshot is being built, the snapshot-point values of records changed since.
    snapshot_view: Mutex<Option<SnapshotView>>,
    /// Numbers snapshot views, so a builder only ever ends its own.
    next_view: AtomicU64,
}

impl Shared {
    fn history(&self) -> std::sync::MutexGuard<'_, WatchHistory> {
        // Every update of the history is a whole record or reset: a poisoned lock still holds
        // a consistent one.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> RwLockReadGuard<'_, StateTree> {
        // A panic while holding the lock cannot leave the tree half-swapped (the swap is one
        // assignment), so a poisoned lock is still safe to read through.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The applied key-value state of one node; handed to openraft, which drives it.
pub struct StateMachineStore {
    shared: Arc<Shared>,
    snapshots: SnapshotFiles,
    observer: Arc<dyn StoreObserver>,
}

impl StateMachineStore {
    pub(crate) fn open(
        durable: &DurableDb,
        snapshots: SnapshotFiles,
        observer: Arc<dyn StoreObserver>,
        config: &crate::StoreConfig,
    ) -> Result<Self, StoreError> {
        let db = durable.db();
        let control = db.open_tree(CONTROL_TREE)?;
        let generation = match control.get(KEY_GENERATION)? {
            None => 0,
            Some(b) => {
                let arr: [u8; 8] = b.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "state machine generation record".into(),
                    detail: format!("expected 8 bytes, found {}", b.len()),
                })?;
                u64::from_be_bytes(arr)
            }
        };
        let live = state_tree_name(generation);
        // Drop state trees of other generations: leftovers of an install that crashed before
        // its flip, or of an install whose old tree was not dropped yet.
        for name in db.tree_names() {
            if let Ok(name) = std::str::from_utf8(&name) {
                if name.starts_with(STATE_TREE_PREFIX) && name != live {
                    tracing::info!(tree = name, "dropping stale state-machine tree");
                    db.drop_tree(name)?;
                }
            }
        }
        let tree = db.open_tree(&live)?;
        let applied: Option<LogId> = read_record(&tree, KEY_LAST_APPLIED)?.flatten();
        let cluster_id: u64 = read_record(&tree, KEY_CLUSTER_ID)?.unwrap_or(0);
        let revision = stored_revision(&tree)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db: durable.clone(),
                control,
                state: RwLock::new(StateTree { generation, tree }),
                applied_index: AtomicU64::new(applied.map_or(0, |l| l.index)),
                revision: AtomicU64::new(revision),
                history: Mutex::new(WatchHistory::new(
                    revision,
                    config.watch_history_revisions,
                    config.watch_history_bytes,
                )),
                revision_tx: tokio::sync::watch::Sender::new(revision),
                cluster_id: AtomicU64::new(cluster_id),
                snapshot_view: Mutex::new(None),
                next_view: AtomicU64::new(1),
            }),
            snapshots,
            observer,
        })
    }

    /// A read-only view sharing this state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }

    fn tree(&self) -> sled::Tree {
        self.shared.state().tree.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let tree = self.tree();
        let applied = read_record::<Option<LogId>>(&tree, KEY_LAST_APPLIED)
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?
            .flatten();
        let membership = read_record::<StoredMembership>(&tree, KEY_MEMBERSHIP)
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    /// Takes every entry openraft offers in one go (the stream must be drained), applies them
    /// as one atomic batch, and only then answers the clients waiting on them: an answer never
    /// goes out before a read on this node can see its write.
    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), StorageError>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, StorageError>> + Unpin + openraft::OptionalSend,
    {
        let (entries, responders): (Vec<_>, Vec<_>) = entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        let responses = self.apply_entries(entries).await?;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.begin_snapshot_build()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), StorageError> {
        self.install_snapshot_state(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.load_current_snapshot().await
    }
}
