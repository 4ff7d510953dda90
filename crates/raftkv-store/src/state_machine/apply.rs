//! Applying committed log entries: [`BatchApplier`] turns the entries of one `apply` call
//! (client commands, membership changes, session bookkeeping) into a single atomic
//! `sled::Batch`, which lands under the state's write lock together with the new applied index
//! and store revision (each change bumps the revision: see the parent module, "Revisions").

mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::Ordering;

use openraft::{EntryPayload, ErrorVerb};

use super::history::{Event, EventKind};
use super::layout::{
    data_key, read_record, StoredValue, DATA_PREFIX, KEY_CLOCK, KEY_CLUSTER_ID, KEY_LAST_APPLIED, KEY_MEMBERSHIP,
    KEY_REMOVED_IDS, KEY_REVISION, KEY_SESSION_GC,
};
use super::{read_err, sm_err, StateMachineStore};
use crate::codec;
use crate::command::{Command, Compare, CompareTarget, KeyValue, Request, Response, TxnOp, TxnOpResult};
use crate::error::StoreError;
use crate::sessions::{session_key, Admission, SessionRecord, SESSION_GC_INTERVAL_MS, SESSION_PREFIX};
use crate::types::{Entry, StorageError, StoredMembership};

impl StateMachineStore {
    /// Applies `entries` as one atomic batch and returns their responses, one per entry
    /// (`RaftStateMachine::apply` answers the waiting clients with them; recovery and tests call
    /// this directly).
    pub async fn apply_entries<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = std::time::Instant::now();
        let tree = self.tree();
        let mut applier = BatchApplier::new(&tree)?;
        let mut responses = Vec::new();
        let mut last_applied = None;
        let mut membership: Option<StoredMembership> = None;
        for entry in entries {
            let log_id = entry.log_id;
            applier.begin_entry(log_id.index);
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
                EntryPayload::Normal(request) => applier.apply_request(request)?,
            };
            responses.push(response);
            last_applied = Some(log_id);
        }
        let Some(last_applied) = last_applied else {
            return Ok(responses);
        };
        applier.write_record(KEY_LAST_APPLIED, &Some(last_applied))?;
        let revision = applier.revision;
        if applier.revision_unrecorded || revision != applier.revision_at_start {
            applier.write_record(KEY_REVISION, &revision)?;
        }
        if let Some(m) = &membership {
            applier.write_record(KEY_MEMBERSHIP, m)?;
        }
        self.save_before_images(&tree, &applier.touched)?;
        let cluster_id = applier.cluster_id;
        let events = std::mem::take(&mut applier.events);
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
            self.shared.revision.store(revision, Ordering::Release);
            self.shared.history().record(events, revision);
        }
        self.shared.revision_tx.send_if_modified(|current| {
            let moved = *current != revision;
            *current = revision;
            moved
        });
        self.observer.applied(responses.len(), started.elapsed());
        Ok(responses)
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
    /// Raw records (leases and their attachments) written so far, by tree key.
    raw: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    sessions: BTreeMap<u64, Option<SessionRecord>>,
    clock: Option<u64>,
    cluster_id: Option<u64>,
    /// The store revision as of the writes so far (bumped by each change).
    revision: u64,
    revision_at_start: u64,
    /// The state has no revision record yet (new, or written before revisions were counted
    /// per write): the first entry sets the base, see [`Self::begin_entry`].
    revision_unrecorded: bool,
    base_pending: bool,
    /// The changes made, in order, for the watch history.
    events: Vec<Event>,
}

impl<'a> BatchApplier<'a> {
    fn new(tree: &'a sled::Tree) -> Result<Self, StorageError> {
        let recorded: Option<u64> = read_record(tree, KEY_REVISION).map_err(read_err)?;
        let revision = recorded.unwrap_or(0);
        Ok(Self {
            tree,
            batch: sled::Batch::default(),
            touched: BTreeSet::new(),
            overlay: BTreeMap::new(),
            raw: BTreeMap::new(),
            sessions: BTreeMap::new(),
            clock: None,
            cluster_id: None,
            revision,
            revision_at_start: revision,
            revision_unrecorded: recorded.is_none(),
            base_pending: recorded.is_none(),
            events: Vec::new(),
        })
    }

    /// Called before each entry. In a state without a revision record, the revision before
    /// entry `index` is `index - 1`: revisions used to be log indexes, so counting on from there
    /// never reuses one, and — unlike "the applied index when the first batch began" — it does
    /// not depend on how entries happened to be batched, so every replica counts alike.
    fn begin_entry(&mut self, index: u64) {
        if self.base_pending {
            self.base_pending = false;
            self.revision = index.saturating_sub(1);
            self.revision_at_start = self.revision;
        }
    }

    /// The revision of the change `change` names: taken (the store revision bumped) at its
    /// first write, so a change that ends up writing nothing takes none, and every write of one
    /// change (a transaction, a range delete) shares it.
    fn change_revision(&mut self, change: &mut Option<u64>) -> u64 {
        *change.get_or_insert_with(|| {
            self.revision += 1;
            self.revision
        })
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
    fn apply_request(&mut self, request: Request) -> Result<Response, StorageError> {
        self.advance_clock(request.timestamp_ms)?;
        if let Command::Batch(writes) = request.command {
            let mut responses = Vec::with_capacity(writes.len());
            for write in writes {
                let one = Request {
                    timestamp_ms: request.timestamp_ms,
                    session: write.session,
                    command: write.command,
                };
                responses.push(self.apply_request(one)?);
            }
            return Ok(Response::Batch(responses));
        }
        let Some(session) = request.session else {
            return self.apply(request.command);
        };
        let mut rec = self.session(session.client_id)?.unwrap_or_default();
        match rec.admit(&session) {
            Admission::Duplicate(saved) => Ok(saved),
            Admission::AlreadyAcknowledged => Ok(Response::AlreadyAcknowledged {
                client_id: session.client_id,
                seq: session.seq,
            }),
            Admission::New => {
                let response = self.apply(request.command)?;
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

    fn put(
        &mut self,
        change: &mut Option<u64>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<Option<KeyValue>, StorageError> {
        let revision = self.change_revision(change);
        let prev = self.current(&key)?;
        let next = StoredValue {
            value,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
        };
        let prev = prev.map(|p| p.into_key_value(key.clone()));
        self.detach(&key)?;
        self.events.push(Event {
            kind: EventKind::Put,
            kv: next.clone().into_key_value(key.clone()),
            prev_kv: prev.clone(),
        });
        self.set(key, Some(next))?;
        Ok(prev)
    }

    fn delete(&mut self, change: &mut Option<u64>, key: Vec<u8>) -> Result<Option<KeyValue>, StorageError> {
        let Some(prev) = self.current(&key)? else {
            return Ok(None);
        };
        let revision = self.change_revision(change);
        self.set(key.clone(), None)?;
        self.detach(&key)?;
        let prev = prev.into_key_value(key.clone());
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
            },
            prev_kv: Some(prev.clone()),
        });
        Ok(Some(prev))
    }

    fn delete_range(
        &mut self,
        change: &mut Option<u64>,
        start: &[u8],
        end: Option<&[u8]>,
        want_prev: bool,
    ) -> Result<(u64, Vec<KeyValue>), StorageError> {
        let mut prev_kvs = Vec::new();
        let mut deleted = 0;
        for key in self.keys_in_range(start, end)? {
            if let Some(kv) = self.delete(change, key)? {
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

    fn txn_op(&mut self, change: &mut Option<u64>, op: TxnOp) -> Result<TxnOpResult, StorageError> {
        Ok(match op {
            TxnOp::Put { key, value, prev_kv } => {
                let prev = self.put(change, key, value)?;
                TxnOpResult::Put {
                    prev_kv: prev.filter(|_| prev_kv),
                }
            }
            TxnOp::Delete { key, prev_kv } => {
                let prev = self.delete(change, key)?;
                TxnOpResult::Delete {
                    deleted: u64::from(prev.is_some()),
                    prev_kvs: prev.filter(|_| prev_kv).into_iter().collect(),
                }
            }
            TxnOp::DeleteRange { start, end, prev_kv } => {
                let (deleted, prev_kvs) =
                    self.delete_range(change, &start, end.as_deref().map(|e| e.as_slice()), prev_kv)?;
                TxnOpResult::Delete { deleted, prev_kvs }
            }
            TxnOp::Get { key } => TxnOpResult::Get { kv: self.get(&key)? },
            TxnOp::Range { start, end } => {
                let mut kvs = Vec::new();
                for key in self.keys_in_range(&start, end.as_deref().map(|e| e.as_slice()))? {
                    kvs.extend(self.get(&key)?);
                }
                TxnOpResult::Range { kvs }
            }
            TxnOp::PutLeased {
                key,
                value,
                prev_kv,
                lease,
            } => {
                let prev = self.put_leased(change, key, value, lease)?;
                TxnOpResult::Put {
                    prev_kv: prev.filter(|_| prev_kv),
                }
            }
        })
    }

    /// Applies one command as one change; its reply carries the store revision after it (the
    /// change's own, or the current one when it changed nothing).
    fn apply(&mut self, command: Command) -> Result<Response, StorageError> {
        let mut change = None;
        match command {
            Command::Put { key, value, prev_kv } => {
                let prev = self.put(&mut change, key, value)?;
                Ok(Response::Put {
                    revision: self.revision,
                    prev_kv: prev.filter(|_| prev_kv),
                })
            }
            Command::Delete { key, prev_kv } => {
                let prev = self.delete(&mut change, key)?;
                Ok(Response::Delete {
                    revision: self.revision,
                    deleted: u64::from(prev.is_some()),
                    prev_kvs: prev.filter(|_| prev_kv).into_iter().collect(),
                })
            }
            Command::DeleteRange { start, end, prev_kv } => {
                let (deleted, prev_kvs) =
                    self.delete_range(&mut change, &start, end.as_deref().map(|e| e.as_slice()), prev_kv)?;
                Ok(Response::Delete {
                    revision: self.revision,
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
                // A missing lease refuses the whole branch before any of it is applied.
                for op in &ops {
                    if let TxnOp::PutLeased { lease, .. } = op {
                        if !self.lease_exists(*lease)? {
                            return Ok(Response::LeaseNotFound { id: *lease });
                        }
                    }
                }
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(self.txn_op(&mut change, op)?);
                }
                Ok(Response::Txn {
                    revision: self.revision,
                    succeeded,
                    results,
                })
            }
            Command::Batch(writes) => {
                // apply_request unpacks batches (each write under its own session); one that
                // arrives here, without a session, is applied the same way: a change each.
                let mut responses = Vec::with_capacity(writes.len());
                for write in writes {
                    responses.push(self.apply(write.command)?);
                }
                Ok(Response::Batch(responses))
            }
            Command::LeaseGrant { id, ttl_ms } => self.lease_grant(id, ttl_ms),
            Command::LeaseRevoke { id } => self.lease_revoke(&mut change, id),
            Command::PutLeased {
                key,
                value,
                prev_kv,
                lease,
            } => {
                if !self.lease_exists(lease)? {
                    return Ok(Response::LeaseNotFound { id: lease });
                }
                let prev = self.put_leased(&mut change, key, value, lease)?;
                Ok(Response::Put {
                    revision: self.revision,
                    prev_kv: prev.filter(|_| prev_kv),
                })
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
