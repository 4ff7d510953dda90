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
//!
//! It also hands leadership over on purpose ([`transfer`]): `raftkv cluster transfer-leader`,
//! and a leader stopped with SIGTERM, which gives leadership to its most up-to-date follower
//! before it goes so that a rolling restart costs one hand-off per node rather than one
//! election timeout.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use raftkv_store::types::Raft;
use raftkv_store::{NodeId, TypeConfig};

use crate::api::error::ApiError;

type Metrics = openraft::RaftMetrics<TypeConfig>;

/// When this node last heard from a leader (an AppendEntries or heartbeat arrived). openraft's
/// metrics say which leader a follower knows, not whether it still hears it; with pre-vote a
/// follower cut off from everyone keeps naming its old leader, so health asks this instead.
#[derive(Clone, Debug, Default)]
pub struct LeaderContact {
    last: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl LeaderContact {
    /// An AppendEntries (or heartbeat) arrived from a leader.
    pub fn heard(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    /// When a leader was last heard from (None: never, since this process started).
    pub fn last(&self) -> Option<std::time::Instant> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds since a leader was last heard from (None: never).
    pub fn silent_ms(&self) -> Option<u64> {
        self.last()
            .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

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

/// The term this node leads in, with a quorum behind it (None: it does not lead, or has
/// stepped down). What lease expiry and keep-alives go by.
pub fn leading_term(raft: &Raft) -> Option<u64> {
    let m = raft.metrics().borrow_watched().clone();
    (standing(&m, lease_of(raft)) == Standing::Leading).then_some(m.current_term)
}

/// The leader this node names to clients: none while it has stepped down.
pub fn visible_leader(m: &Metrics, lease: Duration) -> Option<NodeId> {
    match standing(m, lease) {
        Standing::SteppedDown { .. } => None,
        _ => m.current_leader,
    }
}

/// The leader lease `raft` runs with.
pub fn lease_of(raft: &Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max)
}

/// How long a leadership hand-off may take, for a cluster whose leader lease is `lease`: the
/// target must catch up and win one election.
pub fn transfer_timeout(lease: Duration) -> Duration {
    lease * 4 + Duration::from_millis(500)
}

/// The voter (other than `me`) whose log, as the leader last saw it, goes furthest: the best
/// place for leadership to go.
pub fn most_up_to_date_follower(m: &Metrics, me: NodeId) -> Option<NodeId> {
    let replication = m.replication.as_ref()?;
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != me)
        .max_by_key(|id| {
            (
                replication.get(id).cloned().flatten().map(|l| l.index),
                std::cmp::Reverse(*id),
            )
        })
}

/// Hands leadership from this node (`me`, which must lead) to `to`, or to the most up-to-date
/// follower; returns the new leader once it leads. openraft stops taking writes on this node,
/// sends the target its missing log and a TransferLeader message, and the target starts an
/// election that the others grant at once.
pub async fn transfer(raft: &Raft, me: NodeId, to: Option<NodeId>) -> Result<NodeId, ApiError> {
    let lease = lease_of(raft);
    let target = {
        let m = raft.metrics().borrow_watched().clone();
        if standing(&m, lease) != Standing::Leading {
            return Err(ApiError::FailedPrecondition(format!(
                "node {me} does not lead with a quorum, so it has no leadership to hand over; send this \
                 to the leader (raftkv cluster leader)"
            )));
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        match to {
            Some(t) if t == me => return Ok(me),
            Some(t) if !voters.contains(&t) => {
                return Err(ApiError::InvalidArgument(format!(
                    "node {t} is not a voter of this cluster (voters: {voters:?}); leadership can only go to a voter"
                )))
            }
            Some(t) => t,
            None => most_up_to_date_follower(&m, me).ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "node {me} is the only voter; there is no one to hand leadership to"
                ))
            })?,
        }
    };
    tracing::info!(to = target, "handing leadership over");
    raft.trigger()
        .transfer_leader(target)
        .await
        .map_err(|_| ApiError::ShuttingDown(me))?;
    let timeout = transfer_timeout(lease);
    raft.wait(Some(timeout))
        .metrics(
            |m| m.current_leader == Some(target) && m.state != ServerState::Leader,
            "leadership handed over",
        )
        .await
        .map_err(|_| ApiError::NoLeader {
            this: me,
            detail: format!(
                "node {target} did not take over within {} ms (it may be down or far behind); an election \
                 will pick a leader",
                timeout.as_millis()
            ),
        })?;
    tracing::info!(to = target, "leadership handed over");
    Ok(target)
}
