//! Who leads, as clients and operators should see it: check-quorum.
//!
//! openraft 0.10 keeps a leader that has lost its quorum in the `Leader` state: once no quorum
//! has acknowledged it for the leader lease (`election_timeout_max`), it refuses new proposals
//! (an empty `ForwardToLeader`) and goes on sending heartbeats, so that when the partition heals
//! it either leads again without an election or learns of the new leader and follows. raftkv
//! treats such a leader as **stepped down** everywhere a client or an operator looks: it names
//! no leader in its replies, `Status` reports `ROLE_STEPPED_DOWN`, health says why it is not
//! serving, writes and linearizable reads sent to it fail at once with `UNAVAILABLE` instead of
//! waiting for a quorum that is not there.

use std::time::Duration;

use openraft::ServerState;
use raftkv_store::{NodeId, TypeConfig};

type Metrics = openraft::RaftMetrics<TypeConfig>;

/// How this node stands, from its latest Raft metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Leads, and a quorum acknowledged it within the lease.
    Leading,
    /// Was elected, but no quorum has acknowledged it for `silent_ms` (longer than the lease).
    SteppedDown { silent_ms: u64 },
    /// Anything else: follower, candidate, learner, shut down.
    NotLeader,
}

/// This node's standing; `lease` is the leader lease (the maximum election timeout).
pub fn standing(m: &Metrics, lease: Duration) -> Standing {
    if m.state != ServerState::Leader {
        return Standing::NotLeader;
    }
    let voters = m.membership_config.membership().voter_ids().count();
    match raftkv_store::types::quorum_ack_age_ms(m) {
        Some(age) if voters > 1 && u128::from(age) > lease.as_millis() => Standing::SteppedDown { silent_ms: age },
        _ => Standing::Leading,
    }
}

/// The leader this node names to clients: none while it has stepped down.
pub fn visible_leader(m: &Metrics, lease: Duration) -> Option<NodeId> {
    match standing(m, lease) {
        Standing::SteppedDown { .. } => None,
        _ => m.current_leader,
    }
}

/// The leader lease `raft` runs with.
pub fn lease_of(raft: &raftkv_store::types::Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max)
}
