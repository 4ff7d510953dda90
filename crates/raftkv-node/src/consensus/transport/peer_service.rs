//! The server side of the peer transport: `raftkv.v1.RaftPeer`, which hands other nodes' Raft
//! RPCs to this node's Raft and answers bootstrap probes.
//!
//! Payloads are codec envelopes of openraft's types (see raftkv-store's codec). A payload that
//! does not decode is refused with INVALID_ARGUMENT; a sender whose data directory was wiped
//! (its incarnation changed) is refused with FAILED_PRECONDITION.
//!
//! It also tells the node's [`ElectionAssist`] what it sees: AppendEntries (a leader is alive)
//! and refused votes (a candidate with a shorter log is trying to replace a silent leader).

use raftkv_proto::v1::raft_peer_server::RaftPeer;
use raftkv_proto::v1::{
    HelloRequest, HelloResponse, RaftMessage, ReadIndexRequest, ReadIndexResponse, RemovedRequest, RemovedResponse,
};
use raftkv_store::types::Raft;
use raftkv_store::NodeId;
use raftkv_store::{codec, StoreHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::consensus::election_assist::{ElectionAssist, RefusedVote};
use crate::consensus::read_index::ReadIndexBatcher;
use crate::consensus::removal::Removal;
use crate::consensus::transport::network::{IncarnationRegistry, Sender};

type VoteRequest = openraft::raft::VoteRequest<NodeId>;

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
        let msg = request.into_inner();
        if let Err(wiped) = self.incarnations.check(msg.from, msg.incarnation) {
            tracing::error!(peer = msg.from, "{wiped}");
            return Err(Status::failed_precondition(wiped.to_string()));
        }
        codec::decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer message from node {}: {e}", msg.from)))
    }

    fn reply<T: Serialize>(&self, result: &T) -> Result<Response<RaftMessage>, Status> {
        let payload = codec::encode(result).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
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
        let result = self.raft.append_entries(rpc).await;
        self.reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest = self.admit(request)?;
        let (candidate_vote, candidate_last_log) = (rpc.vote, rpc.last_log_id);
        let result = self.raft.vote(rpc).await;
        if let Ok(resp) = &result {
            if !resp.vote_granted {
                self.assist.after_refusal(RefusedVote {
                    candidate: candidate_vote.leader_id().voted_for().unwrap_or_default(),
                    candidate_term: candidate_vote.leader_id().term,
                    candidate_last_log,
                    my_last_log: resp.last_log_id,
                });
            }
        }
        self.reply(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.admit(request)?;
        let result = self.raft.install_snapshot(rpc).await;
        self.reply(&result)
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        // Through the leader's confirmation batcher: follower requests share rounds with the
        // leader's own reads. A node that is not the leader answers NOT_LEADER / NO_LEADER.
        let read_index = self.confirm.read_index().await?;
        let term = self.raft.metrics().borrow().current_term;
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
        let term = self.raft.metrics().borrow().current_term;
        Ok(Response::new(HelloResponse {
            node_id: self.me.id,
            incarnation: self.me.incarnation,
            initialized: summary.has_raft_state(),
            cluster_id: self.store.reader().cluster_id(),
            term,
        }))
    }
}
