//! `Removal`: whether this node has been removed from its cluster, and the marker file that
//! keeps it removed across restarts. Once removed, a node serves nothing, never campaigns, and
//! refuses to start again from its data dir ([`crate::boot::identity`] reads the marker).
//!
//! A node learns it was removed from the leader's notice (peer API `Removed`) or by seeing the
//! committed membership drop it ([`crate::ops::health`] watches for that).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raftkv_store::types::Raft;

/// Name of the marker file a removed node leaves in its data dir.
pub const REMOVED_MARKER: &str = "removed";

/// Whether this node has been removed from its cluster. Once removed, a node serves nothing,
/// never campaigns, and refuses to start again from its data dir.
#[derive(Clone)]
pub struct Removal {
    removed: Arc<AtomicBool>,
    marker: PathBuf,
}

impl Removal {
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            removed: Arc::new(AtomicBool::new(false)),
            marker: data_dir.join(REMOVED_MARKER),
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Marks this node removed (idempotent): records it in the data dir, stops campaigning.
    pub fn mark(&self, raft: &Raft, why: &str) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        raft.runtime_config().elect(false);
        if let Err(e) = std::fs::write(&self.marker, format!("{why}\n")) {
            tracing::error!("cannot record the removal in {}: {e}", self.marker.display());
        }
        tracing::warn!("this node was removed from the cluster ({why}); it serves nothing from now on");
    }
}
