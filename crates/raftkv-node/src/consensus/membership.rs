//! Membership changes, run on the leader: add a node (learner, catch up, promote by joint
//! consensus), promote a learner, remove a node, list members. The removed-node state a node
//! keeps afterwards is [`super::removal`].
//!
//! Rules enforced here, with messages that say what to do:
//! - ids start at 1 and are never reused: an id that was ever removed is refused (the removed
//!   ids are part of the replicated state);
//! - a node is promoted only once it is within [`PROMOTE_LAG`] entries of the leader;
//! - the last voter cannot be removed.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use raftkv_proto::v1::raft_peer_client::RaftPeerClient;
use raftkv_proto::v1::{MemberInfo, RemovedRequest};
use raftkv_store::{NodeAddr, NodeId, TypeConfig};

use crate::api::error::ApiError;
use crate::consensus::core::NodeCore;
use crate::consensus::transport::network::PeerNetwork;

/// Most entries a learner may be behind the leader when it is promoted.
pub const PROMOTE_LAG: u64 = 100;
/// How long an add waits for the learner to catch up before giving up (it stays a learner).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
fn change_error(this: NodeId, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
    let change = match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => c,
        other => return ApiError::from_client_write(this, other),
    };
    match change {
        ChangeMembershipError::InProgress(p) => ApiError::FailedPrecondition(format!(
            "another membership change is still in progress ({p}); retry when it has finished"
        )),
        ChangeMembershipError::LearnerNotFound(l) => ApiError::FailedPrecondition(format!(
            "node {} is not a learner of this cluster; add it first (raftkv member add)",
            l.node_id
        )),
        ChangeMembershipError::EmptyMembership(_) => {
            ApiError::FailedPrecondition("the change would leave the cluster without voters".into())
        }
        ChangeMembershipError::UncommittedLeaderLog(u) => ApiError::NoLeader {
            this,
            detail: format!("the new leader has not committed an entry of its term yet ({u})"),
        },
        ChangeMembershipError::NodeMetadataChanged(n) => ApiError::FailedPrecondition(format!(
            "{n}; a member's addresses cannot be changed by a membership change"
        )),
        ChangeMembershipError::UnsupportedMembershipTransition(u) => ApiError::FailedPrecondition(u.to_string()),
    }
}

fn valid_addr(what: &str, addr: &str) -> Result<(), ApiError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ApiError::InvalidArgument(format!("{what} {addr:?} is not HOST:PORT"))),
    }
}

/// The members as the leader sees them.
pub fn members(core: &NodeCore) -> Vec<MemberInfo> {
    let m = core.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last_log = m.last_log_index.unwrap_or(0);
    membership
        .nodes()
        .map(|(id, node)| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |l| l.index);
            let matched = if *id == core.id { last_log } else { matched };
            MemberInfo {
                id: *id,
                client_addr: node.client_addr.clone(),
                peer_addr: node.peer_addr.clone(),
                voter: voters.contains(id),
                matched_index: matched,
                lag: last_log.saturating_sub(matched),
                is_leader: m.current_leader == Some(*id),
            }
        })
        .collect()
}

/// Ok on the leader; else the not-leader answer that names the leader if one is known.
pub fn require_leader(core: &NodeCore) -> Result<(), ApiError> {
    let (state, leader) = {
        let m = core.raft.metrics();
        let m = m.borrow_watched();
        (m.state, m.current_leader)
    };
    if state == ServerState::Leader {
        return Ok(());
    }
    let addr = leader.and_then(|l| {
        core.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.client_addr.clone())
    });
    Err(match (leader, addr) {
        (Some(leader_id), Some(leader_addr)) if leader_id != core.id => ApiError::NotLeader {
            this: core.id,
            leader_id,
            leader_addr,
        },
        _ => ApiError::no_leader(core.id),
    })
}

/// Adds node `id` as a learner, waits until it catches up, and promotes it unless
/// `learner_only`.
///
/// Without a client address it registers an *unstarted* member instead (etcd's MemberAdd):
/// see [`register_unstarted`]. When that member's node then asks to be added with its real
/// addresses (`raftkvd --join`), its client address is published and its role kept.
pub async fn add(core: &NodeCore, id: NodeId, addr: NodeAddr, learner_only: bool) -> Result<(), ApiError> {
    if addr.client_addr.is_empty() {
        return register_unstarted(core, id, addr.peer_addr, learner_only).await;
    }
    if id == 0 {
        return Err(ApiError::InvalidArgument("node ids start at 1".into()));
    }
    valid_addr("client address", &addr.client_addr)?;
    valid_addr("peer address", &addr.peer_addr)?;
    require_leader(core)?;
    if core.store.reader().removed_ids()?.contains(&id) {
        return Err(ApiError::FailedPrecondition(format!(
            "id {id} belonged to a node removed from this cluster, and ids are never reused; give the new node another id"
        )));
    }
    let existing: BTreeMap<NodeId, (NodeAddr, bool)> = {
        let m = core.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(i, n)| (*i, (n.clone(), voters.contains(i))))
            .collect()
    };
    match existing.get(&id) {
        Some((known, _)) if known.client_addr.is_empty() && known.peer_addr == addr.peer_addr => {
            tracing::info!(id, %addr, "an unstarted member published its client address");
            let nodes = BTreeMap::from([(id, addr)]);
            core.raft
                .change_membership(ChangeMembers::SetNodes(nodes), true)
                .await
                .map_err(|e| change_error(core.id, e))?;
            return Ok(());
        }
        Some((known, _)) if *known != addr => {
            return Err(ApiError::FailedPrecondition(format!(
                "node {id} is already a member at {known}; a member's addresses cannot be changed by adding it again"
            )))
        }
        Some((_, true)) => return Ok(()), // already a voter: nothing to do
        Some((_, false)) => {}            // a learner: promote below
        None => {
            tracing::info!(id, %addr, "adding a learner");
            core.raft
                .add_learner(id, addr, true)
                .await
                .map_err(|e| change_error(core.id, e))?;
        }
    }
    if learner_only {
        return Ok(());
    }
    wait_caught_up(core, id).await?;
    promote(core, id).await
}

/// Registers a member that has not started yet, as etcd's MemberAdd does: only its peer address
/// is known, and its id is `id` or (0) the next one never used. It is added as a learner
/// without waiting for it, and made a voter at once unless `learner_only` (a voter that has
/// not started counts against the quorum, as in etcd). Its node is then started with this id
/// and `--join`, which publishes its client address.
async fn register_unstarted(
    core: &NodeCore,
    id: NodeId,
    peer_addr: String,
    learner_only: bool,
) -> Result<(), ApiError> {
    valid_addr("peer address", &peer_addr)?;
    require_leader(core)?;
    let removed = core.store.reader().removed_ids()?;
    let membership = core.raft.metrics().borrow_watched().membership_config.clone();
    let membership = membership.membership();
    if let Some((other, _)) = membership.nodes().find(|(_, n)| n.peer_addr == peer_addr) {
        return Err(ApiError::FailedPrecondition(format!(
            "peer address {peer_addr} is already node {other}'s (etcdserver: peerURL exists)"
        )));
    }
    let id = if id == 0 {
        let highest = membership.nodes().map(|(i, _)| *i).chain(removed.iter().copied()).max();
        highest.unwrap_or(0) + 1
    } else if removed.contains(&id) || membership.get_node(&id).is_some() {
        return Err(ApiError::FailedPrecondition(format!(
            "id {id} is or was a member of this cluster; give the new member another id (or 0 to pick one)"
        )));
    } else {
        id
    };
    let addr = NodeAddr {
        client_addr: String::new(),
        peer_addr,
    };
    tracing::info!(id, %addr, learner_only, "registering an unstarted member");
    core.raft
        .add_learner(id, addr, false)
        .await
        .map_err(|e| change_error(core.id, e))?;
    if learner_only {
        return Ok(());
    }
    promote(core, id).await
}

/// Waits until node `id` is within [`PROMOTE_LAG`] entries of the leader.
async fn wait_caught_up(core: &NodeCore, id: NodeId) -> Result<(), ApiError> {
    let lagging = |m: &openraft::RaftMetrics<raftkv_store::TypeConfig>| {
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map_or(0, |l| l.index);
        last.saturating_sub(matched) > PROMOTE_LAG
    };
    core.raft
        .wait(Some(CATCH_UP_TIMEOUT))
        .metrics(|m| !lagging(m) || m.state != ServerState::Leader, "learner catches up")
        .await
        .map_err(|_| {
            ApiError::FailedPrecondition(format!(
                "node {id} did not catch up within {CATCH_UP_TIMEOUT:?}; it stays a learner (promote it later)"
            ))
        })?;
    require_leader(core)
}

/// Makes learner `id` a voter (joint consensus).
pub async fn promote(core: &NodeCore, id: NodeId) -> Result<(), ApiError> {
    require_leader(core)?;
    tracing::info!(id, "promoting to voter");
    core.raft
        .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
        .await
        .map_err(|e| change_error(core.id, e))?;
    Ok(())
}

/// Removes node `id` (voter or learner), then tells it so.
pub async fn remove(core: &NodeCore, peers: &PeerNetwork, id: NodeId) -> Result<(), ApiError> {
    require_leader(core)?;
    let (node, is_voter, voters) = {
        let m = core.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        (membership.get_node(&id).cloned(), voters.contains(&id), voters.len())
    };
    let Some(node) = node else {
        return Err(ApiError::FailedPrecondition(format!(
            "node {id} is not a member of this cluster"
        )));
    };
    if is_voter && voters == 1 {
        return Err(ApiError::FailedPrecondition(format!(
            "node {id} is the last voter; a cluster cannot remove its last voter"
        )));
    }
    tracing::info!(id, voter = is_voter, "removing a member");
    let change = if is_voter {
        ChangeMembers::RemoveVoters([id].into())
    } else {
        ChangeMembers::RemoveNodes([id].into())
    };
    let response = core
        .raft
        .change_membership(change, false)
        .await
        .map_err(|e| change_error(core.id, e))?;
    if is_voter {
        // RemoveVoters with retain=false also drops the node; make sure no learner is left.
        let still_there = core
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if still_there {
            core.raft
                .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                .await
                .map_err(|e| change_error(core.id, e))?;
        }
    }
    let at_index = response.log_id.index;
    if id == core.id {
        // The leader removed itself: it steps down once the change commits (openraft does that).
        return Ok(());
    }
    tell_removed(core.id, peers, id, node, at_index);
    Ok(())
}

/// Tells node `id` it was removed, a few times in the background (it may be down).
fn tell_removed(from: NodeId, peers: &PeerNetwork, id: NodeId, node: NodeAddr, at_index: u64) {
    let peers = peers.clone();
    tokio::spawn(async move {
        for attempt in 0..5u32 {
            let Ok(channel) = peers.channel(peers.peer_addr(id, &node.peer_addr)) else {
                return;
            };
            let mut request = tonic::Request::new(RemovedRequest { from, at_index });
            request.set_timeout(Duration::from_secs(1));
            if RaftPeerClient::new(channel).removed(request).await.is_ok() {
                tracing::info!(id, "told node {id} it was removed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
        }
        tracing::warn!(
            id,
            "could not tell node {id} it was removed (is it down?); it will be refused by its peers"
        );
    });
}
