//! `raftkv.v1.Cluster`: what a node knows about itself and the cluster.

use openraft::ServerState;
use raftkv_proto::v1::cluster_server::Cluster;
use raftkv_proto::v1::{Member, Role, StatusRequest, StatusResponse};
use tonic::{Request, Response, Status};

use crate::core::NodeCore;

pub struct ClusterService {
    core: NodeCore,
}

impl ClusterService {
    pub fn new(core: NodeCore) -> Self {
        Self { core }
    }
}

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.core
            .serve("Status", request, |_request| async move {
                let core = &self.core;
                // Clone what we need and drop the borrow at once: holding it would block Raft.
                let m = core.raft.metrics().borrow().clone();
                let committed = core
                    .raft
                    .with_raft_state(|s| s.committed)
                    .await
                    .map_err(|e| Status::unavailable(format!("node {} is shutting down: {e}", core.id)))?;
                let membership = m.membership_config.membership();
                let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
                let members = membership
                    .nodes()
                    .map(|(id, node)| Member {
                        id: *id,
                        client_addr: node.client_addr.clone(),
                        peer_addr: node.peer_addr.clone(),
                        voter: voters.contains(id),
                    })
                    .collect();
                let me = membership.get_node(&core.id).cloned().unwrap_or_default();
                let leader_addr = m
                    .current_leader
                    .and_then(|l| membership.get_node(&l))
                    .map(|n| n.client_addr.clone())
                    .unwrap_or_default();
                Ok(Response::new(StatusResponse {
                    header: Some(core.header()),
                    id: core.id,
                    role: role(m.state) as i32,
                    term: m.current_term,
                    leader_id: m.current_leader.unwrap_or(0),
                    leader_addr,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    committed_index: committed.map_or(0, |c| c.index),
                    applied_index: m.last_applied.map_or(0, |l| l.index),
                    members,
                    db_size_bytes: core.store.size_on_disk(),
                    client_addr: me.client_addr,
                    peer_addr: me.peer_addr,
                    snapshot_index: m.snapshot.map_or(0, |s| s.index),
                    purged_index: m.purged.map_or(0, |p| p.index),
                    linearizable_reads: core.read_path.reads.requests(),
                    read_index_rounds: core.read_path.reads.rounds(),
                    leadership_confirmations: core.read_path.confirm.rounds(),
                }))
            })
            .await
    }
}
