//! `StateMachineStore`: the applied key-value state on sled, and `StateReader`, the read-only
//! view the node's services use.
//!
//! ## Layout
//! The whole state lives in one sled tree, `sm_state.<generation>`:
//! - `d` + user key -> codec [`StoredValue`] (value, create/mod revision, version);
//! - `m/last_applied`, `m/membership`, `m/cluster_id` -> codec values.
//!
//! Keeping data and metadata in one tree makes every `apply` a single `sled::Batch`, which sled
//! applies atomically: the data, `last_applied` and the membership can never disagree after a
//! crash. Tree `sm_control` holds `generation`, the number of the live state tree.
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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{Command, Compare, CompareTarget, KeyValue, Request, Response, TxnOp, TxnOpResult};
use crate::durable::DurableDb;
use crate::error::StoreError;
use crate::sessions::{session_key, Admission, SessionRecord, SESSION_GC_INTERVAL_MS, SESSION_PREFIX};
use crate::snapshot::{Record, SnapshotFiles, SnapshotPayload};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::StoreObserver;

const CONTROL_TREE: &str = "sm_control";
const STATE_TREE_PREFIX: &str = "sm_state.";
const KEY_GENERATION: &[u8] = b"generation";

const DATA_PREFIX: u8 = b'd';
const KEY_LAST_APPLIED: &[u8] = b"m/last_applied";
const KEY_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const KEY_CLUSTER_ID: &[u8] = b"m/cluster_id";
/// The log clock: the largest leader timestamp applied (see crate::sessions).
const KEY_CLOCK: &[u8] = b"m/clock";
/// Log-clock time of the last expired-session sweep.
const KEY_SESSION_GC: &[u8] = b"m/session_gc";
/// Ids of nodes removed from the membership: never to be reused.
const KEY_REMOVED_IDS: &[u8] = b"m/removed_ids";

/// A user key's value and revision metadata as stored (the key itself is the tree key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredValue {
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

impl StoredValue {
    fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(user_key);
    k
}

fn state_tree_name(generation: u64) -> String {
    format!("{STATE_TREE_PREFIX}{generation}")
}

fn sm_err<E: std::error::Error + 'static>(verb: ErrorVerb, e: &E) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(e)).into()
}

fn snapshot_err<E: std::error::Error + 'static>(verb: ErrorVerb, e: &E) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(e)).into()
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no such key
/// exists (the prefix is empty or all 0xFF bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key range to read: `[start, end)` (no upper bound when `end` is `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    /// At most this many key-values are returned (`more` tells whether there were others).
    pub limit: usize,
    pub keys_only: bool,
    pub count_only: bool,
    pub reverse: bool,
    /// Stop before the returned keys and values exceed this many bytes (`more` is then set);
    /// the first key-value is always returned. `None`: no byte limit.
    pub byte_budget: Option<usize>,
}

/// The answer to a [`RangeQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    /// With `count_only`, the number of matching keys; otherwise the number of `kvs`.
    pub count: u64,
    /// The applied index the whole result was read at.
    pub revision: u64,
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
    cluster_id: AtomicU64,
    /// While a snapshot is being built, the snapshot-point values of records changed since.
    snapshot_view: Mutex<Option<SnapshotView>>,
    /// Numbers snapshot views, so a builder only ever ends its own.
    next_view: AtomicU64,
}

/// The value each record had at a snapshot point, for every record changed since (None: it did
/// not exist then). See [`StateSnapshotBuilder`].
struct SnapshotView {
    token: u64,
    /// Set when a snapshot install replaces the tree the builder scans: that tree changes no
    /// more, so nothing further needs saving (and the new tree's values must not be).
    closed: bool,
    before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Shared {
    fn state(&self) -> RwLockReadGuard<'_, StateTree> {
        // A panic while holding the lock cannot leave the tree half-swapped (the swap is one
        // assignment), so a poisoned lock is still safe to read through.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Read-only access to the applied state, shared with the node's gRPC services. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<Shared>,
}

impl StateReader {
    /// The index of the last log entry applied (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Acquire)
    }

    /// The cluster id recorded in the state (0 until the first leader has set it).
    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id.load(Ordering::Acquire)
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let state = self.shared.state();
        match state.tree.get(data_key(key))? {
            None => Ok(None),
            Some(bytes) => {
                let stored: StoredValue = codec::decode(&bytes)?;
                Ok(Some(stored.into_key_value(key.to_vec())))
            }
        }
    }

    /// Reads a range of keys in key order (or reverse order).
    pub fn range(&self, q: &RangeQuery) -> Result<RangeResult, StoreError> {
        let start = data_key(&q.start);
        let end = match &q.end {
            Some(end) => Bound::Excluded(data_key(end)),
            None => Bound::Excluded(vec![DATA_PREFIX + 1]),
        };
        // The read lock keeps applies out for the whole scan: one consistent revision.
        let state = self.shared.state();
        let revision = self.applied_index();
        let iter = state.tree.range::<Vec<u8>, _>((Bound::Included(start), end));
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if q.reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        let mut out = RangeResult {
            revision,
            ..Default::default()
        };
        let mut bytes = 0usize;
        for item in iter {
            let (k, v) = item?;
            if q.count_only {
                out.count += 1;
                continue;
            }
            if out.kvs.len() >= q.limit {
                out.more = true;
                break;
            }
            let stored: StoredValue = codec::decode(&v)?;
            let mut kv = stored.into_key_value(k[1..].to_vec());
            if q.keys_only {
                kv.value = Vec::new();
            }
            let size = kv.key.len() + kv.value.len();
            if q.byte_budget
                .is_some_and(|budget| !out.kvs.is_empty() && bytes + size > budget)
            {
                out.more = true;
                break;
            }
            bytes += size;
            out.kvs.push(kv);
        }
        if !q.count_only {
            out.count = out.kvs.len() as u64;
        }
        Ok(out)
    }

    /// Ids of nodes that were removed from the cluster; they must never be reused.
    pub fn removed_ids(&self) -> Result<BTreeSet<u64>, StoreError> {
        let state = self.shared.state();
        Ok(read_record(&state.tree, KEY_REMOVED_IDS)?.unwrap_or_default())
    }

    /// Checks the checksum of every state record (O(n), at start); an error names the record.
    pub fn verify(&self) -> Result<usize, StoreError> {
        crate::verify_tree(&self.shared.state().tree, |key| {
            format!("state record {:?}", String::from_utf8_lossy(key))
        })
    }

    /// Whether the state holds any user key (for start-up consistency checks).
    pub fn has_user_data(&self) -> Result<bool, StoreError> {
        let state = self.shared.state();
        Ok(state.tree.scan_prefix([DATA_PREFIX]).next().transpose()?.is_some())
    }

    /// Every user key-value in key order (for tests and consistency checks; O(n) memory).
    pub fn dump(&self) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self
            .range(&RangeQuery {
                limit: usize::MAX,
                ..Default::default()
            })?
            .kvs)
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
        Ok(Self {
            shared: Arc::new(Shared {
                db: durable.clone(),
                control,
                state: RwLock::new(StateTree { generation, tree }),
                applied_index: AtomicU64::new(applied.map_or(0, |l| l.index)),
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

    /// While a snapshot is being built, records the current (snapshot-point) value of every
    /// key the coming batch changes, unless already recorded.
    fn save_before_images(&self, tree: &sled::Tree, touched: &BTreeSet<Vec<u8>>) -> Result<(), StorageError> {
        let mut view = self.shared.snapshot_view.lock().unwrap_or_else(|e| e.into_inner());
        let Some(view) = view.as_mut().filter(|v| !v.closed) else {
            return Ok(());
        };
        for key in touched {
            if !view.before.contains_key(key) {
                let before = tree.get(key).map_err(read_err)?.map(|v| v.to_vec());
                view.before.insert(key.clone(), before);
            }
        }
        Ok(())
    }
}

fn read_record<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(b) => Ok(Some(codec::decode(&b)?)),
    }
}

/// Applies the commands of one `apply` call into a single atomic batch, reading through the
/// writes made earlier in the same batch (so later entries, and later operations of a
/// transaction, see earlier ones).
struct BatchApplier<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    /// Every raw tree key the batch writes (for an in-progress snapshot's before-images).
    touched: BTreeSet<Vec<u8>>,
    overlay: BTreeMap<Vec<u8>, Option<StoredValue>>,
    sessions: BTreeMap<u64, Option<SessionRecord>>,
    clock: Option<u64>,
    cluster_id: Option<u64>,
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    sm_err(ErrorVerb::Read, &e)
}

impl<'a> BatchApplier<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            batch: sled::Batch::default(),
            touched: BTreeSet::new(),
            overlay: BTreeMap::new(),
            sessions: BTreeMap::new(),
            clock: None,
            cluster_id: None,
        }
    }

    fn record<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        read_record(self.tree, key).map_err(read_err)
    }

    fn write_record<T: serde::Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        self.insert_raw(key.to_vec(), bytes);
        Ok(())
    }

    fn insert_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.insert(key.as_slice(), value);
        self.touched.insert(key);
    }

    fn remove_raw(&mut self, key: Vec<u8>) {
        self.batch.remove(key.as_slice());
        self.touched.insert(key);
    }

    /// Records nodes that a new membership drops, so their ids are never reused.
    fn note_removed_nodes(
        &mut self,
        before: &StoredMembership,
        after: &openraft::Membership<u64, crate::NodeAddr>,
    ) -> Result<(), StorageError> {
        let gone: Vec<u64> = before
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| after.get_node(id).is_none())
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut removed: BTreeSet<u64> = self.record(KEY_REMOVED_IDS)?.unwrap_or_default();
        removed.extend(gone);
        self.write_record(KEY_REMOVED_IDS, &removed)
    }

    fn session(&self, client_id: u64) -> Result<Option<SessionRecord>, StorageError> {
        match self.sessions.get(&client_id) {
            Some(rec) => Ok(rec.clone()),
            None => self.record(&session_key(client_id)),
        }
    }

    fn set_session(&mut self, client_id: u64, rec: Option<SessionRecord>) -> Result<(), StorageError> {
        match &rec {
            Some(r) => self.write_record(&session_key(client_id), r)?,
            None => self.remove_raw(session_key(client_id)),
        }
        self.sessions.insert(client_id, rec);
        Ok(())
    }

    /// Moves the log clock to `timestamp_ms` if it is later, sweeping expired sessions when a
    /// sweep interval of log time has passed.
    fn advance_clock(&mut self, timestamp_ms: u64) -> Result<(), StorageError> {
        let clock = match self.clock {
            Some(c) => c,
            None => self.record(KEY_CLOCK)?.unwrap_or(0),
        };
        if timestamp_ms <= clock {
            self.clock = Some(clock);
            return Ok(());
        }
        self.clock = Some(timestamp_ms);
        self.write_record(KEY_CLOCK, &timestamp_ms)?;
        let last_sweep: u64 = self.record(KEY_SESSION_GC)?.unwrap_or(0);
        if timestamp_ms.saturating_sub(last_sweep) >= SESSION_GC_INTERVAL_MS {
            self.write_record(KEY_SESSION_GC, &timestamp_ms)?;
            let mut expired = Vec::new();
            for item in self.tree.scan_prefix(SESSION_PREFIX) {
                let (k, _) = item.map_err(read_err)?;
                let id = k[SESSION_PREFIX.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        read_err(StoreError::Corrupt {
                            what: "session record key".into(),
                            detail: format!("{} bytes", k.len()),
                        })
                    })?;
                expired.push(id);
            }
            for id in expired {
                if self.session(id)?.is_some_and(|r| r.expired(timestamp_ms)) {
                    self.set_session(id, None)?;
                }
            }
        }
        Ok(())
    }

    /// Applies one client request, once: a retry of a write this client already made gets the
    /// saved answer.
    fn apply_request(&mut self, revision: u64, request: Request) -> Result<Response, StorageError> {
        self.advance_clock(request.timestamp_ms)?;
        if let Command::Batch(writes) = request.command {
            let mut responses = Vec::with_capacity(writes.len());
            for write in writes {
                let one = Request {
                    timestamp_ms: request.timestamp_ms,
                    session: write.session,
                    command: write.command,
                };
                responses.push(self.apply_request(revision, one)?);
            }
            return Ok(Response::Batch(responses));
        }
        let Some(session) = request.session else {
            return self.apply(revision, request.command);
        };
        let mut rec = self.session(session.client_id)?.unwrap_or_default();
        match rec.admit(&session) {
            Admission::Duplicate(saved) => Ok(saved),
            Admission::AlreadyAcknowledged => Ok(Response::AlreadyAcknowledged {
                client_id: session.client_id,
                seq: session.seq,
            }),
            Admission::New => {
                let response = self.apply(revision, request.command)?;
                rec.record(&session, request.timestamp_ms, &response);
                self.set_session(session.client_id, Some(rec))?;
                Ok(response)
            }
        }
    }

    fn current(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        match self.tree.get(data_key(key)).map_err(read_err)? {
            None => Ok(None),
            Some(b) => codec::decode(&b).map(Some).map_err(read_err),
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Option<StoredValue>) -> Result<(), StorageError> {
        match &value {
            Some(v) => {
                let bytes = codec::encode(v).map_err(|e| sm_err(ErrorVerb::Write, &e))?;
                self.insert_raw(data_key(&key), bytes);
            }
            None => self.remove_raw(data_key(&key)),
        }
        self.overlay.insert(key, value);
        Ok(())
    }

    /// The keys that currently exist in `[start, end)`, in order.
    fn keys_in_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<Vec<u8>>, StorageError> {
        let upper = match end {
            Some(e) => Bound::Excluded(data_key(e)),
            None => Bound::Excluded(vec![DATA_PREFIX + 1]),
        };
        let mut keys = BTreeSet::new();
        for item in self.tree.range::<Vec<u8>, _>((Bound::Included(data_key(start)), upper)) {
            let (k, _) = item.map_err(read_err)?;
            keys.insert(k[1..].to_vec());
        }
        let overlay_upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        for (k, v) in self
            .overlay
            .range::<Vec<u8>, _>((Bound::Included(start.to_vec()), overlay_upper))
        {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn put(&mut self, revision: u64, key: Vec<u8>, value: Vec<u8>) -> Result<Option<KeyValue>, StorageError> {
        let prev = self.current(&key)?;
        let next = StoredValue {
            value,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
        };
        self.set(key.clone(), Some(next))?;
        Ok(prev.map(|p| p.into_key_value(key)))
    }

    fn delete(&mut self, key: Vec<u8>) -> Result<Option<KeyValue>, StorageError> {
        let prev = self.current(&key)?;
        if prev.is_some() {
            self.set(key.clone(), None)?;
        }
        Ok(prev.map(|p| p.into_key_value(key)))
    }

    fn delete_range(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        want_prev: bool,
    ) -> Result<(u64, Vec<KeyValue>), StorageError> {
        let mut prev_kvs = Vec::new();
        let mut deleted = 0;
        for key in self.keys_in_range(start, end)? {
            if let Some(kv) = self.delete(key)? {
                deleted += 1;
                if want_prev {
                    prev_kvs.push(kv);
                }
            }
        }
        Ok((deleted, prev_kvs))
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        Ok(self.current(key)?.map(|v| v.into_key_value(key.to_vec())))
    }

    fn compare_holds(&self, c: &Compare) -> Result<bool, StorageError> {
        let current = self.current(&c.key)?;
        let number = |f: fn(&StoredValue) -> u64| current.as_ref().map_or(0, f);
        Ok(match &c.target {
            CompareTarget::Value(op, expected) => match &current {
                Some(v) => op.holds(v.value.as_slice(), expected.as_slice()),
                None => false,
            },
            CompareTarget::Version(op, n) => op.holds(&number(|v| v.version), n),
            CompareTarget::CreateRevision(op, n) => op.holds(&number(|v| v.create_revision), n),
            CompareTarget::ModRevision(op, n) => op.holds(&number(|v| v.mod_revision), n),
            CompareTarget::Exists(expected) => current.is_some() == *expected,
        })
    }

    fn txn_op(&mut self, revision: u64, op: TxnOp) -> Result<TxnOpResult, StorageError> {
        Ok(match op {
            TxnOp::Put { key, value, prev_kv } => {
                let prev = self.put(revision, key, value)?;
                TxnOpResult::Put {
                    prev_kv: prev.filter(|_| prev_kv),
                }
            }
            TxnOp::Delete { key, prev_kv } => {
                let prev = self.delete(key)?;
                TxnOpResult::Delete {
                    deleted: u64::from(prev.is_some()),
                    prev_kvs: prev.filter(|_| prev_kv).into_iter().collect(),
                }
            }
            TxnOp::DeleteRange { start, end, prev_kv } => {
                let (deleted, prev_kvs) = self.delete_range(&start, end.as_deref().map(|e| e.as_slice()), prev_kv)?;
                TxnOpResult::Delete { deleted, prev_kvs }
            }
            TxnOp::Get { key } => TxnOpResult::Get { kv: self.get(&key)? },
        })
    }

    fn apply(&mut self, revision: u64, command: Command) -> Result<Response, StorageError> {
        match command {
            Command::Put { key, value, prev_kv } => {
                let prev = self.put(revision, key, value)?;
                Ok(Response::Put {
                    revision,
                    prev_kv: prev.filter(|_| prev_kv),
                })
            }
            Command::Delete { key, prev_kv } => {
                let prev = self.delete(key)?;
                Ok(Response::Delete {
                    revision,
                    deleted: u64::from(prev.is_some()),
                    prev_kvs: prev.filter(|_| prev_kv).into_iter().collect(),
                })
            }
            Command::DeleteRange { start, end, prev_kv } => {
                let (deleted, prev_kvs) = self.delete_range(&start, end.as_deref().map(|e| e.as_slice()), prev_kv)?;
                Ok(Response::Delete {
                    revision,
                    deleted,
                    prev_kvs,
                })
            }
            Command::Txn(txn) => {
                let mut succeeded = true;
                for c in &txn.compares {
                    if !self.compare_holds(c)? {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded { txn.success } else { txn.failure };
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(self.txn_op(revision, op)?);
                }
                Ok(Response::Txn {
                    revision,
                    succeeded,
                    results,
                })
            }
            Command::Batch(writes) => {
                // apply_request unpacks batches (each write under its own session); one that
                // arrives here, without a session, is applied the same way.
                let mut responses = Vec::with_capacity(writes.len());
                for write in writes {
                    responses.push(self.apply(revision, write.command)?);
                }
                Ok(Response::Batch(responses))
            }
            Command::SetClusterId { cluster_id } => {
                let current = match self.cluster_id {
                    Some(id) => id,
                    None => read_record(self.tree, KEY_CLUSTER_ID).map_err(read_err)?.unwrap_or(0),
                };
                let effective = if current == 0 { cluster_id } else { current };
                if current == 0 {
                    self.write_record(KEY_CLUSTER_ID, &effective)?;
                }
                self.cluster_id = Some(effective);
                Ok(Response::ClusterId { cluster_id: effective })
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = std::time::Instant::now();
        let tree = self.tree();
        let mut applier = BatchApplier::new(&tree);
        let mut responses = Vec::new();
        let mut last_applied = None;
        let mut membership: Option<StoredMembership> = None;
        for entry in entries {
            let log_id = entry.log_id;
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Membership(m) => {
                    let before = match membership.take() {
                        Some(b) => b,
                        None => applier.record(KEY_MEMBERSHIP)?.unwrap_or_default(),
                    };
                    applier.note_removed_nodes(&before, &m)?;
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    Response::Empty
                }
                EntryPayload::Normal(request) => applier.apply_request(log_id.index, request)?,
            };
            responses.push(response);
            last_applied = Some(log_id);
        }
        let Some(last_applied) = last_applied else {
            return Ok(responses);
        };
        applier.write_record(KEY_LAST_APPLIED, &Some(last_applied))?;
        if let Some(m) = &membership {
            applier.write_record(KEY_MEMBERSHIP, m)?;
        }
        self.save_before_images(&tree, &applier.touched)?;
        let cluster_id = applier.cluster_id;
        {
            // Exclusive while the batch lands, so a reader holding the lock (a Range) sees the
            // state of exactly one applied index, and that index with it.
            let _exclusive = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
            tree.apply_batch(applier.batch)
                .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
            if let Some(id) = cluster_id {
                self.shared.cluster_id.store(id, Ordering::Release);
            }
            self.shared.applied_index.store(last_applied.index, Ordering::Release);
        }
        self.observer.applied(responses.len(), started.elapsed());
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs in the state-machine worker, between two applies: this is the snapshot point.
        // Only the point's metadata is read here; the scan runs later, in build_snapshot, while
        // applies go on, reading the point's values of anything changed since from the view.
        let tree = self.tree();
        let point = (|| -> Result<(Option<LogId>, StoredMembership), StoreError> {
            let applied = read_record::<Option<LogId>>(&tree, KEY_LAST_APPLIED)?.flatten();
            let membership = read_record(&tree, KEY_MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        })();
        let token = self.shared.next_view.fetch_add(1, Ordering::Relaxed);
        *self.shared.snapshot_view.lock().unwrap_or_else(|e| e.into_inner()) = Some(SnapshotView {
            token,
            closed: false,
            before: BTreeMap::new(),
        });
        StateSnapshotBuilder {
            point: Some(point),
            token,
            tree,
            shared: self.shared.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installing snapshot");
        let data = snapshot.into_inner();
        let payload: SnapshotPayload = codec::decode(&data).map_err(|e| snapshot_err(ErrorVerb::Read, &e))?;

        // 1. The snapshot file first: once the state says "applied up to N", a snapshot covering
        //    N must exist for replication to lagging followers.
        let files = self.snapshots.clone();
        let meta_owned = meta.clone();
        let data_for_file = data;
        tokio::task::spawn_blocking(move || files.save(&meta_owned, &data_for_file))
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?;

        // 2. The new state, in a fresh tree.
        let durable = &self.shared.db;
        let db = durable.db();
        let old_generation = self.shared.state().generation;
        let new_generation = old_generation + 1;
        let new_name = state_tree_name(new_generation);
        let w = |e: sled::Error| sm_err(ErrorVerb::Write, &e);
        db.drop_tree(&new_name).map_err(w)?;
        let tree = db.open_tree(&new_name).map_err(w)?;
        let mut batch = sled::Batch::default();
        let mut cluster_id = 0;
        for Record(k, v) in payload.records {
            if k.as_slice() == KEY_CLUSTER_ID {
                cluster_id = codec::decode(&v).map_err(|e| snapshot_err(ErrorVerb::Read, &e))?;
            }
            batch.insert(k, v);
        }
        let encode_err = |e: codec::CodecError| sm_err(ErrorVerb::Write, &e);
        batch.insert(KEY_LAST_APPLIED, codec::encode(&meta.last_log_id).map_err(encode_err)?);
        batch.insert(
            KEY_MEMBERSHIP,
            codec::encode(&meta.last_membership).map_err(encode_err)?,
        );
        tree.apply_batch(batch).map_err(w)?;
        durable.flush_async().await.map_err(w)?;

        // 3. Flip the live generation (one insert), durably.
        self.shared
            .control
            .insert(KEY_GENERATION, &new_generation.to_be_bytes())
            .map_err(w)?;
        durable.flush_async().await.map_err(w)?;
        let build_in_progress = {
            let mut view = self.shared.snapshot_view.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = view.as_mut() {
                v.closed = true;
            }
            view.is_some()
        };
        {
            let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
            *state = StateTree {
                generation: new_generation,
                tree,
            };
        }
        // A snapshot being built still scans the old tree; it is then dropped at the next start.
        if !build_in_progress {
            db.drop_tree(state_tree_name(old_generation)).map_err(w)?;
        }
        self.shared.cluster_id.store(cluster_id, Ordering::Release);
        self.shared
            .applied_index
            .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Release);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = self.snapshots.clone();
        let loaded = tokio::task::spawn_blocking(move || files.load())
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, &e))?
            .map_err(|e| snapshot_err(ErrorVerb::Read, &e))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot of the state as of the moment `get_snapshot_builder` ran (the snapshot
/// point) without stopping applies: it scans the live tree, then replaces the value of every
/// record changed since the point with the point's value, which `apply` saved in the shared
/// snapshot view before changing it.
pub struct StateSnapshotBuilder {
    point: Option<Result<(Option<LogId>, StoredMembership), StoreError>>,
    token: u64,
    tree: sled::Tree,
    shared: Arc<Shared>,
    snapshots: SnapshotFiles,
}

/// What a snapshot scan needs, owned, so the scan can run on a blocking thread: reading and
/// encoding the whole state takes hundreds of milliseconds on a large store, and on a runtime
/// worker it would hold up heartbeats and replication long enough to cause elections.
struct ViewScanner {
    token: u64,
    tree: sled::Tree,
    shared: Arc<Shared>,
}

impl StateSnapshotBuilder {
    fn scanner(&self) -> ViewScanner {
        ViewScanner {
            token: self.token,
            tree: self.tree.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl ViewScanner {
    /// Ends this builder's view (and only this builder's) and returns it.
    fn end_view(&self) -> Option<SnapshotView> {
        let mut view = self.shared.snapshot_view.lock().unwrap_or_else(|e| e.into_inner());
        if view.as_ref().is_some_and(|v| v.token == self.token) {
            view.take()
        } else {
            None
        }
    }

    /// The records as of the snapshot point; ends the view.
    fn scan(&self) -> Result<Vec<Record>, StoreError> {
        let mut records = BTreeMap::new();
        let scanned = (|| -> Result<(), StoreError> {
            for item in self.tree.iter() {
                let (k, v) = item?;
                records.insert(k.to_vec(), v.to_vec());
            }
            Ok(())
        })();
        let view = self.end_view();
        scanned?;
        let view = view.ok_or_else(|| StoreError::Corrupt {
            what: "snapshot view".into(),
            detail: "another snapshot build replaced this one's view".into(),
        })?;
        for (k, before) in view.before {
            match before {
                Some(v) => records.insert(k, v),
                None => records.remove(&k),
            };
        }
        Ok(records
            .into_iter()
            .filter(|(k, _)| k.as_slice() != KEY_LAST_APPLIED && k.as_slice() != KEY_MEMBERSHIP)
            .map(|(k, v)| Record(k, v))
            .collect())
    }
}

impl Drop for StateSnapshotBuilder {
    fn drop(&mut self) {
        // A builder dropped without building (or after failing) must not leave applies saving
        // before-images for nobody.
        self.scanner().end_view();
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let r = |e: StoreError| snapshot_err(ErrorVerb::Read, &e);
        let (last_applied, last_membership) = match self.point.take() {
            Some(point) => point.map_err(r)?,
            None => {
                let e = StoreError::Corrupt {
                    what: "snapshot builder".into(),
                    detail: "build_snapshot called twice".into(),
                };
                return Err(r(e));
            }
        };
        let scanner = self.scanner();
        let records = tokio::task::spawn_blocking(move || scanner.scan())
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, &e))?
            .map_err(r)?;
        // The state machine must be durable up to the snapshot before openraft purges the log
        // behind it.
        self.shared
            .db
            .flush_async()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        let data = tokio::task::spawn_blocking(move || codec::encode(&SnapshotPayload { records }))
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let snapshot_id = match &last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, millis),
            None => format!("0-0-{millis}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let files = self.snapshots.clone();
        let (meta_c, data_c) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || files.save(&meta_c, &data_c))
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
