//! Reads of the applied state: [`StateReader`], the read-only handle the node's services hold,
//! and the range queries it answers ([`RangeQuery`], [`RangeResult`], [`prefix_end`]).
//!
//! Reads never write. They hold the shared state's read lock, which `apply` takes exclusively
//! while a batch lands, so a range is read at exactly one applied index.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::history::{HistoryError, HistoryRead};
use super::layout::{
    data_key, key_lease_key, lease_id_after, lease_key, lease_keys_prefix, read_record, LeaseRecord, StoredValue,
    DATA_PREFIX, KEY_REMOVED_IDS, LEASE_PREFIX,
};
use super::Shared;
use crate::codec;
use crate::command::KeyValue;
use crate::error::StoreError;

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

/// A lease as the applied state knows it: its id and the TTL it was granted with. (Its
/// deadline lives on the leader; see the node's `LeaseKeeper`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
}

/// The answer to `q` from matching `items` in order (decoded only when returned): the count,
/// or the key-values up to the limit and byte budget, `more` when some were left.
fn take<T>(
    q: &RangeQuery,
    revision: u64,
    items: impl Iterator<Item = Result<T, StoreError>>,
    decode: impl Fn(T) -> Result<KeyValue, StoreError>,
) -> Result<RangeResult, StoreError> {
    let mut out = RangeResult {
        revision,
        ..Default::default()
    };
    let mut bytes = 0usize;
    for item in items {
        let item = item?;
        if q.count_only {
            out.count += 1;
            continue;
        }
        if out.kvs.len() >= q.limit {
            out.more = true;
            break;
        }
        let mut kv = decode(item)?;
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

/// Read-only access to the applied state, shared with the node's gRPC services. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    pub(super) shared: Arc<Shared>,
}

impl StateReader {
    /// The index of the last log entry applied (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Acquire)
    }

    /// The store revision of the applied state: the revision of the latest change (see the
    /// parent module, "Revisions"). Not a log index.
    pub fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// A receiver of the store revision: it changes after every apply that changed something
    /// (and at a snapshot install). Watchers wait on it for the next change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.revision_tx.subscribe()
    }

    /// The changes from revision `from` on (about `max_events`, whole revisions), from the
    /// watch history; `Compacted` when it no longer holds `from`.
    pub fn changes_since(&self, from: u64, max_events: usize) -> Result<HistoryRead, HistoryError> {
        self.shared.history().read(from, max_events)
    }

    /// The oldest revision the watch history holds (a watch can start there or later).
    pub fn oldest_watchable(&self) -> u64 {
        self.shared.history().oldest()
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
        // The read lock keeps applies out for the whole scan: one consistent revision.
        let state = self.shared.state();
        let revision = self.revision();
        Self::scan(&state.tree, q, revision)
    }

    /// Reads a range as it was at revision `at`: the current state with every change after
    /// `at` undone from the watch history, newest first (each change there carries the
    /// key-value it replaced). `Compacted` when the history no longer holds every change after
    /// `at`; `at` at or past the current revision reads the current state. The result's
    /// `revision` is the current one, as in etcd's headers. The keys read keep no lease.
    pub fn range_at(&self, q: &RangeQuery, at: u64) -> Result<Result<RangeResult, HistoryError>, StoreError> {
        let state = self.shared.state();
        let revision = self.revision();
        if at >= revision {
            return Self::scan(&state.tree, q, revision).map(Ok);
        }
        let every = RangeQuery {
            limit: usize::MAX,
            keys_only: false,
            count_only: false,
            reverse: false,
            byte_budget: None,
            ..q.clone()
        };
        let now = Self::scan(&state.tree, &every, revision)?;
        let mut kvs: BTreeMap<Vec<u8>, KeyValue> = now.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let in_range = |key: &[u8]| key >= &q.start[..] && q.end.as_ref().is_none_or(|end| key < &end[..]);
        if let Err(compacted) = self.shared.history().roll_back(&mut kvs, at, in_range) {
            return Ok(Err(compacted));
        }
        let kvs: Box<dyn Iterator<Item = Result<KeyValue, StoreError>>> = if q.reverse {
            Box::new(kvs.into_values().rev().map(Ok))
        } else {
            Box::new(kvs.into_values().map(Ok))
        };
        take(q, revision, kvs, Ok).map(Ok)
    }

    /// The range `q` of `tree`, which is at `revision`.
    fn scan(tree: &sled::Tree, q: &RangeQuery, revision: u64) -> Result<RangeResult, StoreError> {
        let start = data_key(&q.start);
        let end = match &q.end {
            Some(end) => Bound::Excluded(data_key(end)),
            None => Bound::Excluded(vec![DATA_PREFIX + 1]),
        };
        let iter = tree
            .range::<Vec<u8>, _>((Bound::Included(start), end))
            .map(|item| item.map_err(StoreError::from));
        let iter: Box<dyn Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>>> = if q.reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        take(q, revision, iter, |(k, v)| {
            let stored: StoredValue = codec::decode(&v)?;
            Ok(stored.into_key_value(k[1..].to_vec()))
        })
    }

    /// Lease `id`, if it exists.
    pub fn lease(&self, id: u64) -> Result<Option<LeaseInfo>, StoreError> {
        let state = self.shared.state();
        let record: Option<LeaseRecord> = read_record(&state.tree, &lease_key(id))?;
        Ok(record.map(|r| LeaseInfo { id, ttl_ms: r.ttl_ms }))
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let state = self.shared.state();
        let mut out = Vec::new();
        for item in state.tree.scan_prefix(LEASE_PREFIX) {
            let (k, v) = item?;
            let record: LeaseRecord = codec::decode(&v)?;
            out.push(LeaseInfo {
                id: lease_id_after(LEASE_PREFIX, &k)?,
                ttl_ms: record.ttl_ms,
            });
        }
        Ok(out)
    }

    /// The lease `key` is attached to (0: none).
    pub fn lease_of(&self, key: &[u8]) -> Result<u64, StoreError> {
        let state = self.shared.state();
        Ok(read_record::<u64>(&state.tree, &key_lease_key(key))?.unwrap_or(0))
    }

    /// The keys attached to lease `id`, in key order (empty for a lease that does not exist).
    pub fn lease_keys(&self, id: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = lease_keys_prefix(id);
        let state = self.shared.state();
        let mut out = Vec::new();
        for item in state.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            out.push(k[prefix.len()..].to_vec());
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
