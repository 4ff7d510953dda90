//! `NodeCore`: what the gRPC services share: the Raft handle, the store, and the write and read
//! paths every client call goes through. It knows nothing of metrics or health: those observe
//! it ([`crate::ops`]), and the API times its calls itself ([`crate::api::call`]).

use openraft::async_runtime::WatchReceiver;
use std::time::{SystemTime, UNIX_EPOCH};

use raftkv_proto::v1::{Consistency, ResponseHeader};
use raftkv_store::command::{ClientSession, Command, Response as SmResponse};
use raftkv_store::types::Raft;
use raftkv_store::{NodeId, StoreHandle};

use crate::admission::disk_guard::DiskGuard;
use crate::api::error::ApiError;
use crate::consensus::leadership;
use crate::consensus::read_index::ReadPath;
use crate::consensus::removal::Removal;
use crate::consensus::transport::network::PeerNetwork;
use crate::consensus::write_batcher::WriteBatcher;

/// Shared by the client-facing services of one node. Cheap to clone.
#[derive(Clone)]
pub struct NodeCore {
    pub id: NodeId,
    pub raft: Raft,
    pub store: StoreHandle,
    pub read_path: ReadPath,
    pub removal: Removal,
    pub peers: PeerNetwork,
    pub writes: WriteBatcher,
    /// Free-space alarm: writes are refused while it is on.
    pub disk: DiskGuard,
    /// When a leader was last heard from (for health).
    pub leader_contact: leadership::LeaderContact,
}

impl NodeCore {
    /// The header every client reply carries.
    pub fn header(&self) -> ResponseHeader {
        let (term, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_term,
                leadership::visible_leader(&m, leadership::lease_of(&self.raft)),
            )
        };
        ResponseHeader {
            cluster_id: self.store.reader().cluster_id(),
            node_id: self.id,
            raft_term: term,
            revision: self.store.reader().revision(),
            leader_id: leader.unwrap_or(0),
        }
    }

    /// Proposes `command` through Raft (batched with concurrent writes, see [`WriteBatcher`])
    /// and waits until it is committed and applied here. With a `session`, a retry of a write
    /// already applied gets the first answer instead of applying again.
    pub async fn write(&self, command: Command, session: Option<ClientSession>) -> Result<SmResponse, ApiError> {
        if self.disk.alarm() {
            return Err(ApiError::NoSpace {
                this: self.id,
                free_mb: self.disk.free_bytes() / (1024 * 1024),
                reserve_mb: self.disk.reserve_bytes() / (1024 * 1024),
            });
        }
        self.writes.write(command, session).await
    }

    /// Makes a read at `consistency` safe to serve from the local state.
    ///
    /// Linearizable, on any node: get a read index (the leader confirms its leadership with a
    /// quorum; a follower asks the leader), then wait until this node has applied up to it.
    /// Stale: nothing to wait for.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        match consistency {
            Consistency::Stale => Ok(()),
            Consistency::Unspecified | Consistency::Linearizable => {
                let index = self.read_path.reads.read_index().await?;
                self.wait_applied(index).await
            }
        }
    }

    /// Waits until the local state machine has applied `index`. The caller's deadline bounds
    /// the wait (the gRPC server cancels the call when it passes).
    async fn wait_applied(&self, index: u64) -> Result<(), ApiError> {
        if self.store.reader().applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(None)
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| ApiError::ShuttingDown(self.id))
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
