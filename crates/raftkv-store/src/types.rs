//! The openraft type configuration of raftkv and short aliases for the types it fixes.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};

/// A node id. Ids start at 1 (0 means "none" in the public API) and are never reused.
pub type NodeId = u64;

/// How to reach a node: its client API address and its peer (Raft) address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of the public gRPC API (KV, Cluster).
    pub client_addr: String,
    /// `host:port` of the node-to-node gRPC API (RaftPeer).
    pub peer_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.client_addr, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// raftkv's openraft type configuration. Term, leader id, vote and entry are openraft's
    /// defaults: a `u64` term and the "advanced" leader id `{term, node_id}`, the same layout
    /// 0.9 stored.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        // Named, not left to the macro's default, which is a deprecated re-export.
        AsyncRuntime = openraft_rt_tokio::TokioRuntime,
);

/// The state machine is part of the Raft type in openraft 0.10.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineStore>;
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// What a snapshot's bytes travel in (the state machine's and the network's).
pub type SnapshotData = Cursor<Vec<u8>>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// openraft 0.10's storage traits report plain I/O errors (openraft adds what and where).
pub type StorageError = std::io::Error;
pub type LogState = openraft::storage::LogState<TypeConfig>;

/// A storage error saying what failed (`what`) and why (`e`).
pub fn storage_error(what: &str, e: impl fmt::Display) -> StorageError {
    std::io::Error::other(format!("{what}: {e}"))
}

/// On a leader: milliseconds since a quorum last acknowledged it (None elsewhere, or before the
/// first acknowledgement).
pub fn quorum_ack_age_ms(m: &openraft::RaftMetrics<TypeConfig>) -> Option<u64> {
    use openraft::async_runtime::Instant;
    m.last_quorum_acked
        .as_ref()
        .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
}
