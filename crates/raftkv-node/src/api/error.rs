//! `ApiError`: everything the client API can answer besides success, and its mapping to gRPC
//! status codes and metadata, in one place.
//!
//! | variant          | code               | `raftkv-error`  | retry?                          |
//! |------------------|--------------------|-----------------|---------------------------------|
//! | InvalidArgument  | INVALID_ARGUMENT   | –               | no: fix the request             |
//! | NotLeader        | UNAVAILABLE        | `not-leader`    | yes, on the leader named        |
//! | NoLeader         | UNAVAILABLE        | `no-leader`     | yes, after a pause              |
//! | ShuttingDown     | UNAVAILABLE        | `shutting-down` | yes, on another node            |
//! | Indeterminate    | UNAVAILABLE        | `indeterminate` | only if the write is idempotent |
//! | DeadlineExceeded | DEADLINE_EXCEEDED  | `deadline`      | a read yes; a write's outcome is unknown |
//! | Storage          | INTERNAL           | –               | no: the node needs attention    |
//! | AlreadyAcknowledged | FAILED_PRECONDITION | –            | no: the client already has it   |
//! | FailedPrecondition | FAILED_PRECONDITION | –              | no: change the cluster first    |
//! | Removed          | FAILED_PRECONDITION | `removed`       | yes, on another node            |
//! | Unauthenticated  | UNAUTHENTICATED    | –               | no: send a valid token          |
//! | PermissionDenied | PERMISSION_DENIED  | –               | no: use a token with the role   |
//! | Overloaded       | RESOURCE_EXHAUSTED | `overloaded`    | yes, after a backoff            |
//! | NoSpace          | RESOURCE_EXHAUSTED | `no-space`      | no: free disk space first       |
//! | Compacted        | OUT_OF_RANGE       | `compacted`     | on another node, or re-read and watch from now |
//! | LeaseNotFound    | NOT_FOUND          | –               | no: grant a new lease           |
//! | LeaseExists      | ALREADY_EXISTS     | –               | no: pick another id, or none    |

use openraft::errors::{ClientWriteError, ForwardReason, ForwardToLeader, LinearizableReadError, RaftError};
use raftkv_proto::{error_kind, metadata};
use raftkv_store::{NodeId, TypeConfig};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("node {this} is not the leader; send this request to the leader, node {leader_id} at {leader_addr}")]
    NotLeader {
        this: NodeId,
        leader_id: NodeId,
        leader_addr: String,
    },
    /// `detail` says why (never empty: see [`ApiError::ELECTION_OR_NO_QUORUM`]).
    #[error("node {this} knows no leader: {detail}; retry shortly, or on another node")]
    NoLeader { this: NodeId, detail: String },
    #[error("node {0} is shutting down; use another node")]
    ShuttingDown(NodeId),
    #[error("the outcome of this write is unknown: it may or may not have been applied ({0})")]
    Indeterminate(String),
    #[error("node {this}: {rpc} did not finish within its deadline of {deadline_ms} ms; if it was a write, its outcome is unknown (it may still be applied): read the key to find out, or retry a write that is safe to repeat")]
    DeadlineExceeded {
        this: NodeId,
        rpc: &'static str,
        deadline_ms: u64,
    },
    #[error("storage error on this node: {0}")]
    Storage(String),
    #[error("write {seq} of client {client_id:#x} was already applied and its answer acknowledged; nothing was applied again")]
    AlreadyAcknowledged { client_id: u64, seq: u64 },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("node {0} has been removed from the cluster and serves nothing; to rejoin, start a node with a new id and an empty data dir")]
    Removed(NodeId),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("node {this} is overloaded: it is already running {limit} calls (--max-inflight-requests); retry after a backoff")]
    Overloaded { this: NodeId, limit: usize },
    #[error("node {this} refuses writes: its disk is nearly full ({free_mb} MiB free, --min-free-mb {reserve_mb}). Reads still work; writes resume by themselves once space is freed")]
    NoSpace {
        this: NodeId,
        free_mb: u64,
        reserve_mb: u64,
    },
    #[error("node {this} cannot watch from revision {wanted}: its watch history starts at revision {oldest} (older changes were compacted, or happened before it started). Watch from {oldest} or later, or read the current state and watch from its revision + 1")]
    Compacted { this: NodeId, wanted: u64, oldest: u64 },
    #[error("lease {0:x} does not exist: it was never granted, or it expired or was revoked (its keys are gone with it); grant a new lease")]
    LeaseNotFound(u64),
    #[error("lease {0:x} already exists; grant with another id, or with id 0 to let the leader pick one")]
    LeaseExists(u64),
}

impl ApiError {
    /// The [`ApiError::NoLeader`] detail when nothing more precise is known.
    pub const ELECTION_OR_NO_QUORUM: &'static str =
        "an election may be under way, or a majority of the nodes cannot be reached";

    /// A [`ApiError::NoLeader`] with the generic detail.
    pub fn no_leader(this: NodeId) -> Self {
        Self::NoLeader {
            this,
            detail: Self::ELECTION_OR_NO_QUORUM.into(),
        }
    }

    /// The answer of a leader that has stepped down: no majority answered it within the
    /// election timeout (`silent_ms`: for how long, when known).
    pub fn stepped_down(this: NodeId, silent_ms: Option<u64>) -> Self {
        let silence = match silent_ms {
            Some(ms) => format!("for {ms} ms"),
            None => "within the election timeout".into(),
        };
        Self::NoLeader {
            this,
            detail: format!(
                "it was elected leader but no majority has answered it {silence}, so it stepped down ({})",
                Self::ELECTION_OR_NO_QUORUM
            ),
        }
    }

    /// Builds the "go to the leader" answer from openraft's forward hint.
    pub fn forward(this: NodeId, f: &ForwardToLeader<TypeConfig>) -> Self {
        match (f.leader_id, &f.leader_node) {
            (Some(leader_id), Some(node)) if leader_id != this => Self::NotLeader {
                this,
                leader_id,
                leader_addr: node.client_addr.clone(),
            },
            _ => Self::NoLeader {
                this,
                detail: match f.reason {
                    ForwardReason::LeaseExpired => return Self::stepped_down(this, None),
                    ForwardReason::LeadershipTransfer => "it is handing leadership to another node".into(),
                    ForwardReason::NotLeader => Self::ELECTION_OR_NO_QUORUM.into(),
                },
            },
        }
    }

    /// Maps a failed linearizable-read barrier.
    pub fn from_read_barrier(this: NodeId, e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => Self::forward(this, &f),
            RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => Self::NoLeader {
                this,
                detail: format!("leadership could not be confirmed: {q}"),
            },
            RaftError::Fatal(_) => Self::ShuttingDown(this),
        }
    }

    /// Maps a failed `client_write`. A forward hint means the proposal was refused before its
    /// entry was appended: the write did not happen. A discarded entry (this node's copy was
    /// replaced by a new leader's log) may still have committed through another node, and a
    /// fatal error means Raft stopped while the write may have been in flight: both are
    /// indeterminate.
    pub fn from_client_write(this: NodeId, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Self::forward(this, &f),
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => Self::Indeterminate(format!(
                "node {this} lost leadership before the write was known committed; {}",
                Self::forward(this, &f)
            )),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Self::Storage(c.to_string()),
            RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => Self::FailedPrecondition(p.to_string()),
            RaftError::Fatal(f) => Self::Indeterminate(format!("node {this} stopped: {f}")),
        }
    }

    fn kind(&self) -> Option<&'static str> {
        match self {
            Self::NotLeader { .. } => Some(error_kind::NOT_LEADER),
            Self::NoLeader { .. } => Some(error_kind::NO_LEADER),
            Self::ShuttingDown(_) => Some(error_kind::SHUTTING_DOWN),
            Self::Indeterminate(_) => Some(error_kind::INDETERMINATE),
            Self::DeadlineExceeded { .. } => Some(error_kind::DEADLINE),
            Self::Removed(_) => Some(error_kind::REMOVED),
            Self::Overloaded { .. } => Some(error_kind::OVERLOADED),
            Self::NoSpace { .. } => Some(error_kind::NO_SPACE),
            Self::Compacted { .. } => Some(error_kind::COMPACTED),
            Self::Unauthenticated(_)
            | Self::PermissionDenied(_)
            | Self::InvalidArgument(_)
            | Self::Storage(_)
            | Self::AlreadyAcknowledged { .. }
            | Self::FailedPrecondition(_)
            | Self::LeaseNotFound(_)
            | Self::LeaseExists(_) => None,
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotLeader { .. } | Self::NoLeader { .. } | Self::ShuttingDown(_) | Self::Indeterminate(_) => {
                Code::Unavailable
            }
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Storage(_) => Code::Internal,
            Self::AlreadyAcknowledged { .. } | Self::FailedPrecondition(_) | Self::Removed(_) => {
                Code::FailedPrecondition
            }
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Overloaded { .. } | Self::NoSpace { .. } => Code::ResourceExhausted,
            Self::Compacted { .. } => Code::OutOfRange,
            Self::LeaseNotFound(_) => Code::NotFound,
            Self::LeaseExists(_) => Code::AlreadyExists,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let mut status = Status::new(e.code(), e.to_string());
        let md = status.metadata_mut();
        if let Some(kind) = e.kind() {
            md.insert(metadata::ERROR_KIND, MetadataValue::from_static(kind));
        }
        if let ApiError::NotLeader {
            leader_id, leader_addr, ..
        } = &e
        {
            md.insert(metadata::LEADER_ID, MetadataValue::from(*leader_id));
            if let Ok(v) = MetadataValue::try_from(leader_addr.as_str()) {
                md.insert(metadata::LEADER_ADDR, v);
            }
        }
        if let ApiError::Compacted { oldest, .. } = &e {
            md.insert(metadata::OLDEST_REVISION, MetadataValue::from(*oldest));
        }
        status
    }
}

impl From<raftkv_store::StoreError> for ApiError {
    fn from(e: raftkv_store::StoreError) -> Self {
        Self::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_leader_in_metadata() {
        let s: Status = ApiError::NotLeader {
            this: 2,
            leader_id: 1,
            leader_addr: "127.0.0.1:7001".into(),
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(metadata::LEADER_ID).unwrap(), "1");
        assert_eq!(s.metadata().get(metadata::LEADER_ADDR).unwrap(), "127.0.0.1:7001");
        assert_eq!(s.metadata().get(metadata::ERROR_KIND).unwrap(), error_kind::NOT_LEADER);
        assert!(s.message().contains("node 1 at 127.0.0.1:7001"), "{}", s.message());
    }

    #[test]
    fn forward_without_leader_is_no_leader() {
        let f = ForwardToLeader::<TypeConfig>::empty();
        assert!(matches!(ApiError::forward(3, &f), ApiError::NoLeader { this: 3, .. }));
    }

    #[test]
    fn invalid_argument_has_no_retry_hint() {
        let s: Status = ApiError::InvalidArgument("key is empty".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.metadata().get(metadata::ERROR_KIND).is_none());
    }
}
