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
    /// raftkv's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
