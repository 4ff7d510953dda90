//! Building snapshots without stopping applies.
//!
//! `get_snapshot_builder` fixes the snapshot point (between two applies) and opens a
//! [`SnapshotView`]; while it is open, `apply` saves there the point's value of every record it
//! changes. [`StateSnapshotBuilder`] then scans the live tree on a blocking thread and puts
//! those saved values back, so the snapshot is the state as of the point.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::{ErrorVerb, RaftSnapshotBuilder};

use super::layout::{read_record, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use super::{read_err, sm_err, snapshot_err, Shared, StateMachineStore};
use crate::codec;
use crate::error::StoreError;
use crate::snapshot::{Record, SnapshotFiles, SnapshotPayload};
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The value each record had at a snapshot point, for every record changed since (None: it did
/// not exist then). See [`StateSnapshotBuilder`].
pub(super) struct SnapshotView {
    token: u64,
    /// Set when a snapshot install replaces the tree the builder scans: that tree changes no
    /// more, so nothing further needs saving (and the new tree's values must not be).
    pub(super) closed: bool,
    before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl StateMachineStore {
    /// `RaftStateMachine::get_snapshot_builder`: fixes the snapshot point and opens its view.
    pub(super) fn begin_snapshot_build(&mut self) -> StateSnapshotBuilder {
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

    /// While a snapshot is being built, records the current (snapshot-point) value of every
    /// key the coming batch changes, unless already recorded.
    pub(super) fn save_before_images(
        &self,
        tree: &sled::Tree,
        touched: &BTreeSet<Vec<u8>>,
    ) -> Result<(), StorageError> {
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
    type SnapshotData = crate::types::SnapshotData;

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
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
        };
        let files = self.snapshots.clone();
        let (meta_c, data_c) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || files.save(&meta_c, &data_c))
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e))?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}
