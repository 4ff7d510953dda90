//! Installing a snapshot received from the leader (or restored from a backup), and serving
//! the current one.
//!
//! An install replaces the state wholesale: it writes a fresh state tree of the next
//! generation, then flips the live generation with one insert (see the parent module), so no
//! key of the old state survives and a crash leaves either the old state or the new one.

use std::io::Cursor;
use std::sync::atomic::Ordering;

use openraft::ErrorVerb;

use super::layout::{
    state_tree_name, stored_revision, KEY_CLUSTER_ID, KEY_GENERATION, KEY_LAST_APPLIED, KEY_MEMBERSHIP,
};
use super::{sm_err, snapshot_err, StateMachineStore, StateTree};
use crate::codec;
use crate::snapshot::{Record, SnapshotPayload};
use crate::types::{Snapshot, SnapshotData, SnapshotMeta, StorageError};

impl StateMachineStore {
    /// `RaftStateMachine::install_snapshot`: replaces the state with the snapshot's.
    pub(super) async fn install_snapshot_state(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), StorageError> {
        tracing::info!(last_log_id = ?meta.last_log_id, "installing snapshot");
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
        let revision = stored_revision(&tree).map_err(|e| snapshot_err(ErrorVerb::Read, &e))?;

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
            // The changes between the old state and the snapshot's are unknown: watchers must
            // start again from the new revision.
            self.shared.history().reset(revision);
        }
        // A snapshot being built still scans the old tree; it is then dropped at the next start.
        if !build_in_progress {
            db.drop_tree(state_tree_name(old_generation)).map_err(w)?;
        }
        self.shared.cluster_id.store(cluster_id, Ordering::Release);
        self.shared
            .applied_index
            .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Release);
        self.shared.revision.store(revision, Ordering::Release);
        self.shared.revision_tx.send_replace(revision);
        Ok(())
    }

    /// `RaftStateMachine::get_current_snapshot`: the snapshot file, if there is one.
    pub(super) async fn load_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = self.snapshots.clone();
        let loaded = tokio::task::spawn_blocking(move || files.load())
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, &e))?
            .map_err(|e| snapshot_err(ErrorVerb::Read, &e))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Cursor::new(data),
        }))
    }
}
