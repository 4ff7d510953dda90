//! Making a new single-node cluster from existing state: from a backup's snapshot data
//! ([`restore_single_node`]), or from a surviving node's data dir after the rest of its cluster
//! was lost for good ([`export_state`] then [`restore_single_node`]).
//!
//! The new node's state machine holds the old data with revisions intact (its next write gets
//! revision `last_index + 1`), its membership is itself alone, and its vote is in the old term,
//! so its first election moves to a later term than anything in the restored state. The
//! cluster id is dropped: the new cluster's first leader draws a new one.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{Membership, RaftLogReader, RaftSnapshotBuilder};

use crate::codec;
use crate::error::StoreError;
use crate::snapshot::SnapshotPayload;
use crate::state_machine::KEY_CLUSTER_ID;
use crate::types::{LeaderId, LogId, SnapshotMeta, StorageError, StoredMembership, Vote};
use crate::{NodeAddr, NodeId, StoreConfig};

fn storage(what: &str) -> impl Fn(StorageError) -> StoreError + '_ {
    move |e| StoreError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

/// The state a surviving node's data dir holds, as snapshot data: `(data, last_index,
/// last_term)`. First it applies the log entries it knows committed (and, with
/// `include_uncommitted`, every entry it holds — which may resurrect writes their clients saw
/// fail). The node must be stopped.
pub async fn export_state(dir: &Path, include_uncommitted: bool) -> Result<(Vec<u8>, u64, u64), StoreError> {
    let mut store = crate::open(dir, &StoreConfig::default())?;
    let (applied, _) = store
        .state_machine
        .applied_state()
        .await
        .map_err(storage("the state machine"))?;
    let state = store.log_store.get_log_state().await.map_err(storage("the log"))?;
    let committed = store.log_store.read_committed().await.map_err(storage("the log"))?;
    let upto = if include_uncommitted {
        state.last_log_id
    } else {
        committed.max(applied)
    };
    let from = applied.map_or(0, |l| l.index + 1);
    if let Some(upto) = upto.filter(|u| u.index >= from) {
        let entries = store
            .log_store
            .try_get_log_entries(from..=upto.index)
            .await
            .map_err(storage("the log"))?;
        store
            .state_machine
            .apply_entries(entries)
            .await
            .map_err(storage("the state machine"))?;
    }
    let snapshot = store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .map_err(storage("the snapshot"))?;
    let last = snapshot.meta.last_log_id;
    Ok((
        snapshot.snapshot.into_inner(),
        last.map_or(0, |l| l.index),
        last.map_or(0, |l| l.leader_id.term),
    ))
}

/// Creates, in the empty data dir `dir`, the store of a new single-node cluster whose only
/// voter is `node` at `addr`, holding the state in `data` (snapshot data from a backup or from
/// [`export_state`]) as of log index `last_index` in term `last_term`.
pub async fn restore_single_node(
    dir: &Path,
    data: Vec<u8>,
    last_index: u64,
    last_term: u64,
    node: NodeId,
    addr: NodeAddr,
) -> Result<(), StoreError> {
    let mut payload: SnapshotPayload = codec::decode(&data).map_err(|e| StoreError::Corrupt {
        what: "the snapshot data".into(),
        detail: e.to_string(),
    })?;
    payload.records.retain(|r| r.0.as_slice() != KEY_CLUSTER_ID);
    let data = codec::encode(&payload)?;

    let mut store = crate::open(dir, &StoreConfig::default())?;
    if !store.handle.summary()?.is_pristine() {
        return Err(StoreError::Corrupt {
            what: dir.display().to_string(),
            detail: "it already holds data; restore into an empty data dir".into(),
        });
    }
    let log_id = LogId::new(
        LeaderId {
            term: last_term,
            node_id: node,
        },
        last_index,
    );
    let membership =
        Membership::new(vec![[node].into()], BTreeMap::from([(node, addr)])).map_err(|e| StoreError::Corrupt {
            what: "the restored membership".into(),
            detail: e.to_string(),
        })?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };
    store
        .state_machine
        .install_snapshot(&meta, Cursor::new(data))
        .await
        .map_err(storage("the restored state"))?;
    store
        .log_store
        .save_vote(&Vote::new(last_term, node))
        .await
        .map_err(storage("the vote"))?;
    store.handle.flush()?;
    Ok(())
}
