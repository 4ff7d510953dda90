//! Generated gRPC code for raftkv.
//!
//! `raftkv.v1` holds both the public API (`KV`, `Cluster`) and the internal node-to-node API
//! (`RaftPeer`); [`backup`] is the backup file format built on it; [`etcd`] is etcd's v3 API. This crate depends on
//! nothing of ours; everything else builds on it.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftkv.v1");
}

pub mod backup;

/// etcd's v3 API on the wire (proto/etcd/: written for raftkv, names and numbers as etcd 3.5's),
/// which a node serves on its second client port so etcd's clients and tools work unchanged.
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }

    /// The encoded `FileDescriptorSet` of the etcd protos, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("etcd_descriptor");
}

/// The encoded `FileDescriptorSet` of raftkv's protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftkv_descriptor");

/// gRPC metadata keys the server attaches to an `UNAVAILABLE` status, so a client can follow
/// the leader without parsing messages.
pub mod metadata {
    /// Id of the current leader, when the answering node knows one.
    pub const LEADER_ID: &str = "raftkv-leader-id";
    /// Client API address (`host:port`) of the current leader.
    pub const LEADER_ADDR: &str = "raftkv-leader-addr";
    /// Machine-readable reason for the error; see [`crate::error_kind`].
    pub const ERROR_KIND: &str = "raftkv-error";

    /// A random id the client gives each call (the same on its retries), logged by the server
    /// in the call's span so one call can be followed across attempts and nodes.
    pub const REQUEST_ID: &str = "raftkv-request-id";

    /// Exactly-once writes (request metadata on Put, Delete, Txn): the client's random id.
    pub const CLIENT_ID: &str = "raftkv-client-id";
    /// The write's number in the client's sequence; a retry carries the same number.
    pub const REQUEST_SEQ: &str = "raftkv-request-seq";
    /// Every write of this client numbered below this has had its answer; the server may
    /// forget those answers.
    pub const ACKED_BELOW: &str = "raftkv-acked-below";

    /// On a watch refused with `OUT_OF_RANGE` ([`crate::error_kind::COMPACTED`]): the oldest
    /// revision the node's watch history holds.
    pub const OLDEST_REVISION: &str = "raftkv-oldest-revision";

    /// `Bearer TOKEN` ([`bearer`]), on every call to a node started with `--auth-file`.
    pub const AUTHORIZATION: &str = "authorization";
    /// What precedes the token in [`AUTHORIZATION`].
    pub const BEARER_PREFIX: &str = "Bearer ";

    /// The [`AUTHORIZATION`] value carrying `token`.
    pub fn bearer(token: &str) -> String {
        format!("{BEARER_PREFIX}{token}")
    }
}

/// Values of the [`metadata::ERROR_KIND`] key.
pub mod error_kind {
    /// This node is not the leader; the call did not start. Safe to retry on the leader.
    pub const NOT_LEADER: &str = "not-leader";
    /// No leader is known (an election is under way or there is no quorum). The call did not
    /// start; retry after a short pause.
    pub const NO_LEADER: &str = "no-leader";
    /// The node is shutting down. The call did not start.
    pub const SHUTTING_DOWN: &str = "shutting-down";
    /// The write was submitted but its outcome is unknown (it may or may not commit).
    pub const INDETERMINATE: &str = "indeterminate";
    /// The call ran out of its deadline on the server (`DEADLINE_EXCEEDED`); a write's outcome
    /// is unknown.
    pub const DEADLINE: &str = "deadline";
    /// This node was removed from the cluster and serves nothing; use another node.
    pub const REMOVED: &str = "removed";
    /// The node is running as many calls as it allows (`--max-inflight-requests`); this one did
    /// not start. Retry after a backoff, or on another node.
    pub const OVERLOADED: &str = "overloaded";
    /// The node's disk is nearly full (`--min-free-mb`); it refuses writes until space is
    /// freed. Reads still work.
    pub const NO_SPACE: &str = "no-space";
    /// A watch asked for a revision this node's watch history no longer holds
    /// (`OUT_OF_RANGE`; [`crate::metadata::OLDEST_REVISION`] names the oldest it holds). Another
    /// node may still hold it; otherwise read the current state and watch from its revision.
    pub const COMPACTED: &str = "compacted";
}
