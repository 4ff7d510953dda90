//! The server side of the peer transport: `raftkv.v1.RaftPeer`, which hands other nodes' Raft
//! RPCs to this node's Raft and answers bootstrap probes.
//!
//! Payloads are codec envelopes of openraft's types (see raftkv-store's codec). A payload that
//! does not decode is refused with INVALID_ARGUMENT; a sender whose data directory was wiped
//! (its incarnation changed) is refused with FAILED_PRECONDITION.
//!
//! It also tells the node's [`ElectionAssist`] what it sees: AppendEntries (a leader is alive)
//! and refused votes (a candidate with a shorter log is trying to replace a silent leader).

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use raftkv_proto::v1::raft_peer_server::RaftPeer;
use raftkv_proto::v1::{
    HelloRequest, HelloResponse, RaftMessage, ReadIndexRequest, ReadIndexResponse, RemovedRequest, RemovedResponse,
};
use raftkv_store::types::{Raft, Snapshot, SnapshotMeta, Vote};
use raftkv_store::{codec, StoreHandle, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::consensus::election_assist::{ElectionAssist, RefusedVote};
use crate::consensus::read_index::ReadIndexBatcher;
use crate::consensus::removal::Removal;
use crate::consensus::transport::network::{IncarnationRegistry, PeerFailure, PeerReply, Sender};

type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;

/// Largest snapshot a peer may stream to this node (the state is held in memory while it
/// arrives, as openraft's snapshot type is a byte buffer).
const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024 * 1024;

pub struct PeerService {
    raft: Raft,
    me: Sender,
    store: StoreHandle,
    incarnations: IncarnationRegistry,
    confirm: ReadIndexBatcher,
    removal: Removal,
    assist: ElectionAssist,
}

impl PeerService {
    pub fn new(
        raft: Raft,
        me: Sender,
        store: StoreHandle,
        incarnations: IncarnationRegistry,
        confirm: ReadIndexBatcher,
        removal: Removal,
        assist: ElectionAssist,
    ) -> Self {
        Self {
            raft,
            me,
            store,
            incarnations,
            confirm,
            removal,
            assist,
        }
    }

    fn admit<T: DeserializeOwned>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        self.admit_message(request.into_inner())
    }

    fn admit_message<T: DeserializeOwned>(&self, msg: RaftMessage) -> Result<T, Status> {
        if let Err(wiped) = self.incarnations.check(msg.from, msg.incarnation) {
            tracing::error!(peer = msg.from, "{wiped}");
            return Err(Status::failed_precondition(wiped.to_string()));
        }
        codec::decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer message from node {}: {e}", msg.from)))
    }

    /// Answers with `result`, a Raft failure travelling as a [`PeerFailure`].
    fn reply<T: Serialize, E: std::fmt::Display>(&self, result: Result<T, E>) -> Result<Response<RaftMessage>, Status> {
        let result: PeerReply<T> = result.map_err(|e| PeerFailure {
            node: self.me.id,
            message: e.to_string(),
        });
        let payload = codec::encode(&result).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
        Ok(Response::new(RaftMessage {
            payload,
            from: self.me.id,
            incarnation: self.me.incarnation,
        }))
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.admit(request)?;
        self.assist.heard_from_leader();
        self.reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest = self.admit(request)?;
        let (candidate_vote, candidate_last_log) = (rpc.vote, rpc.last_log_id);
        let result = self.raft.vote(rpc).await;
        if let Ok(resp) = &result {
            if !resp.vote_granted {
                self.assist.after_refusal(RefusedVote {
                    candidate: candidate_vote.leader_id().node_id,
                    candidate_term: candidate_vote.leader_id().term,
                    candidate_last_log,
                    my_last_log: resp.last_log_id,
                });
            }
        }
        self.reply(result)
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest = self.admit(request)?;
        self.reply(self.raft.pre_vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut messages = request.into_inner();
        let first = messages
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream: the first message names the snapshot"))??;
        let sender = first.from;
        let (vote, meta): (Vote, SnapshotMeta) = self.admit_message(first)?;
        let mut data = Vec::new();
        while let Some(chunk) = messages.next().await {
            let chunk = chunk?;
            if chunk.from != sender {
                return Err(Status::invalid_argument(format!(
                    "snapshot stream from node {sender} carried a chunk from node {}",
                    chunk.from
                )));
            }
            if data.len() + chunk.payload.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "snapshot from node {sender} is over {MAX_SNAPSHOT_BYTES} bytes"
                )));
            }
            data.extend_from_slice(&chunk.payload);
        }
        tracing::info!(from = sender, bytes = data.len(), last_log_id = ?meta.last_log_id, "received a snapshot");
        let snapshot = Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        };
        self.reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.admit(request)?;
        self.reply(self.raft.handle_transfer_leader(rpc).await)
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        // Through the leader's confirmation batcher: follower requests share rounds with the
        // leader's own reads. A node that is not the leader answers NOT_LEADER / NO_LEADER.
        let read_index = self.confirm.read_index().await?;
        let term = self.raft.metrics().borrow_watched().current_term;
        Ok(Response::new(ReadIndexResponse { read_index, term }))
    }

    async fn removed(&self, request: Request<RemovedRequest>) -> Result<Response<RemovedResponse>, Status> {
        let r = request.into_inner();
        self.removal.mark(
            &self.raft,
            &format!("leader {} removed it at log index {}", r.from, r.at_index),
        );
        Ok(Response::new(RemovedResponse {}))
    }

    async fn hello(&self, _request: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let summary = self
            .store
            .summary()
            .map_err(|e| Status::internal(format!("cannot read local state: {e}")))?;
        let term = self.raft.metrics().borrow_watched().current_term;
        Ok(Response::new(HelloResponse {
            node_id: self.me.id,
            incarnation: self.me.incarnation,
            initialized: summary.has_raft_state(),
            cluster_id: self.store.reader().cluster_id(),
            term,
        }))
    }
}
