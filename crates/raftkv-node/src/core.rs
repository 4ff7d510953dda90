//! `NodeCore`: what the gRPC services share: the Raft handle, the store, and the write and read
//! paths every client call goes through.

use std::time::{SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use raftkv_proto::v1::{Consistency, ResponseHeader};
use raftkv_store::command::{Command, Request, Response};
use raftkv_store::types::Raft;
use raftkv_store::{NodeId, StoreHandle};

use crate::error::ApiError;

/// Shared by the client-facing services of one node. Cheap to clone.
#[derive(Clone)]
pub struct NodeCore {
    pub id: NodeId,
    pub raft: Raft,
    pub store: StoreHandle,
}

impl NodeCore {
    /// The header every client reply carries.
    pub fn header(&self) -> ResponseHeader {
        let (term, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader)
        };
        ResponseHeader {
            cluster_id: self.store.reader().cluster_id(),
            node_id: self.id,
            raft_term: term,
            revision: self.store.reader().applied_index(),
            leader_id: leader.unwrap_or(0),
        }
    }

    /// Proposes `command` through Raft and waits until it is committed and applied here.
    pub async fn write(&self, command: Command) -> Result<Response, ApiError> {
        let request = Request::new(command, now_millis());
        match self.raft.client_write(request).await {
            Ok(r) => Ok(r.data),
            Err(e) => Err(ApiError::from_client_write(self.id, e)),
        }
    }

    /// Makes a read at `consistency` safe to serve from the local state.
    ///
    /// Linearizable: this node must be the leader and confirm its leadership with a quorum
    /// (ReadIndex), then wait until it has applied up to the read index. A follower answers
    /// with the leader's address instead. Stale: nothing to wait for.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        match consistency {
            Consistency::Stale => Ok(()),
            Consistency::Unspecified | Consistency::Linearizable => {
                if !self.is_leader() {
                    // Skip the round trip through RaftCore: a follower cannot serve it yet.
                    let leader = self.raft.metrics().borrow().current_leader;
                    return Err(self.not_leader(leader));
                }
                self.raft
                    .ensure_linearizable()
                    .await
                    .map(|_| ())
                    .map_err(|e| ApiError::from_read_barrier(self.id, e))
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The "ask the leader" answer for `leader`, resolving its client address from membership.
    pub fn not_leader(&self, leader: Option<NodeId>) -> ApiError {
        let addr = leader.and_then(|l| {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.client_addr.clone())
        });
        match (leader, addr) {
            (Some(leader_id), Some(leader_addr)) if leader_id != self.id => ApiError::NotLeader {
                this: self.id,
                leader_id,
                leader_addr,
            },
            _ => ApiError::NoLeader {
                this: self.id,
                detail: String::new(),
            },
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
