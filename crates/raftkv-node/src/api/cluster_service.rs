//! `raftkv.v1.Cluster`: what a node knows about itself and the cluster, membership changes,
//! snapshots and backups.

use openraft::async_runtime::WatchReceiver;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use openraft::ServerState;
use raftkv_proto::v1::cluster_server::Cluster;
use raftkv_proto::v1::{
    backup_chunk, AddMemberRequest, BackupChunk, BackupMeta, BackupRequest, ListMembersRequest, Member,
    MembersResponse, PromoteMemberRequest, RemoveMemberRequest, Role, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use raftkv_store::NodeAddr;
use tonic::{Request, Response, Status};

use crate::api::call::ApiCalls;
use crate::api::error::ApiError;
use crate::consensus::core::{now_millis, NodeCore};
use crate::consensus::leadership::{self, Standing};
use crate::consensus::membership;

/// Size of one backup data message.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// How long a Snapshot or Backup call waits for the snapshot to be built.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);

pub struct ClusterService {
    core: NodeCore,
    calls: ApiCalls,
    /// Where this node serves etcd's v3 API, if it does (reported by Status).
    etcd_addr: Option<String>,
}

impl ClusterService {
    pub fn new(calls: ApiCalls) -> Self {
        Self {
            core: calls.core().clone(),
            calls,
            etcd_addr: None,
        }
    }

    /// Reports `addr` as this node's etcd API address in Status.
    pub fn with_etcd_addr(mut self, addr: Option<String>) -> Self {
        self.etcd_addr = addr;
        self
    }
}

fn role(m: &openraft::RaftMetrics<raftkv_store::TypeConfig>, lease: std::time::Duration) -> Role {
    if let Standing::SteppedDown { .. } = leadership::standing(m, lease) {
        return Role::SteppedDown;
    }
    match m.state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

impl ClusterService {
    fn members_response(&self) -> Result<Response<MembersResponse>, Status> {
        let removed_ids = self.core.store.reader().removed_ids().map_err(ApiError::from)?;
        Ok(Response::new(MembersResponse {
            header: Some(self.core.header()),
            members: membership::members(&self.core),
            removed_ids: removed_ids.into_iter().collect(),
        }))
    }

    /// Builds a snapshot covering at least everything applied now; returns it.
    async fn fresh_snapshot(&self) -> Result<raftkv_store::types::Snapshot, ApiError> {
        let raft = &self.core.raft;
        let applied = raft.metrics().borrow_watched().last_applied;
        let covered = |m: &openraft::RaftMetrics<raftkv_store::TypeConfig>| {
            m.snapshot.map(|s| s.index) >= applied.map(|a| a.index)
        };
        if !covered(&raft.metrics().borrow_watched()) {
            raft.trigger()
                .snapshot()
                .await
                .map_err(|_| ApiError::ShuttingDown(self.core.id))?;
            raft.wait(Some(SNAPSHOT_WAIT))
                .metrics(covered, "snapshot built")
                .await
                .map_err(|e| ApiError::FailedPrecondition(format!("the snapshot was not built: {e}")))?;
        }
        raft.get_snapshot()
            .await
            .map_err(|e| ApiError::Storage(e.to_string()))?
            .ok_or_else(|| ApiError::Storage("no snapshot after building one".into()))
    }
}

type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    type BackupStream = BackupStream;

    async fn add_member(&self, request: Request<AddMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        self.calls
            .serve("AddMember", request, |request| async move {
                let r = request.into_inner();
                let addr = NodeAddr {
                    client_addr: r.client_addr,
                    peer_addr: r.peer_addr,
                };
                membership::add(&self.core, r.id, addr, r.learner_only).await?;
                self.members_response()
            })
            .await
    }

    async fn promote_member(
        &self,
        request: Request<PromoteMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.calls
            .serve("PromoteMember", request, |request| async move {
                membership::promote(&self.core, request.into_inner().id).await?;
                self.members_response()
            })
            .await
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        self.calls
            .serve("TransferLeader", request, |request| async move {
                membership::require_leader(&self.core)?;
                let to = request.into_inner().to;
                let leader_id = leadership::transfer(&self.core.raft, self.core.id, (to != 0).then_some(to)).await?;
                Ok(Response::new(TransferLeaderResponse {
                    header: Some(self.core.header()),
                    leader_id,
                }))
            })
            .await
    }

    async fn remove_member(&self, request: Request<RemoveMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        self.calls
            .serve("RemoveMember", request, |request| async move {
                membership::remove(&self.core, &self.core.peers, request.into_inner().id).await?;
                self.members_response()
            })
            .await
    }

    async fn list_members(&self, request: Request<ListMembersRequest>) -> Result<Response<MembersResponse>, Status> {
        self.calls
            .serve(
                "ListMembers",
                request,
                |_request| async move { self.members_response() },
            )
            .await
    }

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotResponse>, Status> {
        self.calls
            .serve("Snapshot", request, |_request| async move {
                let snapshot = self.fresh_snapshot().await?;
                Ok(Response::new(SnapshotResponse {
                    header: Some(self.core.header()),
                    snapshot_index: snapshot.meta.last_log_id.map_or(0, |l| l.index),
                }))
            })
            .await
    }

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        self.calls
            .serve("Backup", request, |_request| async move {
                let snapshot = self.fresh_snapshot().await?;
                let data = snapshot.snapshot.into_inner();
                let last = snapshot.meta.last_log_id;
                let meta = BackupMeta {
                    cluster_id: self.core.store.reader().cluster_id(),
                    node_id: self.core.id,
                    last_index: last.map_or(0, |l| l.index),
                    last_term: last.map_or(0, |l| l.leader_id.term),
                    size_bytes: data.len() as u64,
                    created_ms: now_millis(),
                    padding: Vec::new(),
                };
                let mut chunks = vec![Ok(BackupChunk {
                    chunk: Some(backup_chunk::Chunk::Meta(meta)),
                })];
                chunks.extend(data.chunks(BACKUP_CHUNK_BYTES).map(|c| {
                    Ok(BackupChunk {
                        chunk: Some(backup_chunk::Chunk::Data(c.to_vec())),
                    })
                }));
                let stream: BackupStream = Box::pin(futures::stream::iter(chunks));
                Ok(Response::new(stream))
            })
            .await
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.calls
            .serve("Status", request, |_request| async move {
                let core = &self.core;
                // Clone what we need and drop the borrow at once: holding it would block Raft.
                let m = core.raft.metrics().borrow_watched().clone();
                let lease = leadership::lease_of(&core.raft);
                let leader = leadership::visible_leader(&m, lease);
                let committed = m.local_committed;
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
                let leader_addr = leader
                    .and_then(|l| membership.get_node(&l))
                    .map(|n| n.client_addr.clone())
                    .unwrap_or_default();
                Ok(Response::new(StatusResponse {
                    header: Some(core.header()),
                    id: core.id,
                    role: role(&m, lease) as i32,
                    term: m.current_term,
                    leader_id: leader.unwrap_or(0),
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
                    disk_free_bytes: core.disk.free_bytes(),
                    disk_space_alarm: core.disk.alarm(),
                    etcd_addr: self.etcd_addr.clone().unwrap_or_default(),
                }))
            })
            .await
    }
}
