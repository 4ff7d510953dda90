//! The client side of the peer transport: how this node's Raft reaches the others over gRPC.
//!
//! - One cached, lazily connected `Channel` per peer address, shared by every replication
//!   stream to that peer ([`PeerNetwork`]).
//! - openraft's deadline (`RPCOption::soft_ttl`) is how long the caller waits; a call not
//!   answered by then is left to finish on its own task and the peer's [`PeerGate`] holds
//!   further calls until it does, so a frozen peer never sees a storm of reset streams.
//! - Failures are classified the way openraft's replication expects: a peer that cannot be
//!   reached is `Unreachable` (openraft backs off), a deadline is `Timeout`, anything else on
//!   the wire is `Network`, and an error returned by the remote Raft is `RemoteError`.
//! - Each peer reply carries `Result<response, PeerFailure>`: a remote Raft that has stopped
//!   answers with a [`PeerFailure`], seen here as `Unreachable` (openraft backs off).
//! - A snapshot streams in chunks ([`full_snapshot`](PeerClient)); each chunk must be taken by
//!   the peer within the RPC deadline, so a large snapshot is never cut off for its size.
//! - AppendEntries batches are kept under [`APPEND_BYTES_BUDGET`] by the log reader
//!   (raftkv-store's `limited_get_log_entries`), not here.
//! - [`LinkFaults`] lets tests cut links between in-process nodes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use raftkv_proto::v1::raft_peer_client::RaftPeerClient;
use raftkv_proto::v1::RaftMessage;
use raftkv_store::codec;
use raftkv_store::types::{Snapshot, SnapshotData, Vote};
use raftkv_store::{NodeAddr, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use super::peer_gate::{CallTicket, PeerGate, ABANDONED_CALL_LIMIT};

/// Largest peer message, in bytes (AppendEntries batches, snapshot chunks).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Soft size budget of one AppendEntries: openraft gives each one heartbeat interval to be
/// sent, fsynced by the follower and answered, so the log reader stops a batch at this many
/// bytes (a single entry is always sent, whatever its size).
pub const APPEND_BYTES_BUDGET: usize = raftkv_store::MAX_APPEND_BATCH_BYTES;
/// How long a peer may take to install a snapshot once it has all of it.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Snapshot chunk size openraft uses when sending a snapshot.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// HTTP/2 keepalive to peers: a PING this often, and the connection is closed if one goes
/// unanswered this long.
const PEER_KEEPALIVE: Duration = Duration::from_secs(2);
/// How long establishing a TCP connection to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Test hook: the set of peers this node cannot reach. Empty in production.
#[derive(Clone, Default, Debug)]
pub struct LinkFaults {
    blocked: Arc<RwLock<HashSet<NodeId>>>,
}

impl LinkFaults {
    /// Cuts the link from this node to `target`.
    pub fn block(&self, target: NodeId) {
        self.blocked.write().unwrap_or_else(|e| e.into_inner()).insert(target);
    }

    /// Restores the link from this node to `target`.
    pub fn unblock(&self, target: NodeId) {
        self.blocked.write().unwrap_or_else(|e| e.into_inner()).remove(&target);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.blocked.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn is_blocked(&self, target: NodeId) -> bool {
        self.blocked.read().unwrap_or_else(|e| e.into_inner()).contains(&target)
    }
}

/// The incarnation each peer had when this process first heard from it. A peer whose
/// incarnation changes had its data directory wiped; it is refused from then on.
#[derive(Clone, Default, Debug)]
pub struct IncarnationRegistry {
    seen: Arc<Mutex<HashMap<NodeId, u64>>>,
}

impl IncarnationRegistry {
    /// Records `incarnation` for `peer` if it is the first seen; errors if it differs from the
    /// first one seen.
    pub fn check(&self, peer: NodeId, incarnation: u64) -> Result<(), WipedPeer> {
        if incarnation == 0 {
            // Hello probes from tools, and messages from builds that predate incarnations.
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&peer) {
            None => {
                seen.insert(peer, incarnation);
                Ok(())
            }
            Some(&known) if known == incarnation => Ok(()),
            Some(&known) => Err(WipedPeer {
                peer,
                known,
                now: incarnation,
            }),
        }
    }
}

/// A peer came back with a different incarnation: its data directory was replaced.
#[derive(Debug, Clone, thiserror::Error)]
#[error("node {peer} came back with a new data directory (incarnation {known:#x} -> {now:#x}); a member that lost its log and vote cannot rejoin under the same id. Remove it from the cluster and add it back under a new id")]
pub struct WipedPeer {
    pub peer: NodeId,
    pub known: u64,
    pub now: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("link to node {0} is cut (test fault injection)")]
struct LinkCut(NodeId);

/// A peer's Raft could not handle a request (it stopped, or its storage failed). What a peer
/// sends back instead of a response; its own type, so the wire does not carry openraft's error
/// types.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("node {node}: {message}")]
pub struct PeerFailure {
    pub node: NodeId,
    pub message: String,
}

/// What every peer reply's payload decodes to.
pub type PeerReply<T> = Result<T, PeerFailure>;

#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {addr:?}: {reason}")]
struct BadPeerAddr {
    addr: String,
    reason: String,
}

/// This node's identity as stamped on every outgoing peer message.
#[derive(Clone, Copy, Debug)]
pub struct Sender {
    pub id: NodeId,
    pub incarnation: u64,
}

/// Builds peer clients for openraft; one per replication stream, all sharing cached channels
/// and one [`PeerGate`] per peer.
#[derive(Clone)]
pub struct PeerNetwork {
    me: Sender,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    gates: Arc<Mutex<HashMap<NodeId, Arc<PeerGate>>>>,
    faults: LinkFaults,
    incarnations: IncarnationRegistry,
    routes: Arc<HashMap<NodeId, String>>,
    /// Mutual TLS for every peer connection (`--peer-tls-*`); plaintext when `None`.
    tls: Option<ClientTlsConfig>,
}

impl PeerNetwork {
    pub fn new(me: Sender, faults: LinkFaults, incarnations: IncarnationRegistry) -> Self {
        Self {
            me,
            channels: Arc::default(),
            gates: Arc::default(),
            faults,
            incarnations,
            routes: Arc::default(),
            tls: None,
        }
    }

    /// Connects to peers with mutual TLS (`--peer-tls-*`).
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Reaches the given peers through other addresses than the membership's (`--peer-route`).
    pub fn with_routes(mut self, routes: impl IntoIterator<Item = (NodeId, String)>) -> Self {
        self.routes = Arc::new(routes.into_iter().collect());
        self
    }

    /// The address to reach node `id`'s peer API: its route if one is set, else `advertised`.
    pub fn peer_addr<'a>(&'a self, id: NodeId, advertised: &'a str) -> &'a str {
        self.routes.get(&id).map_or(advertised, String::as_str)
    }

    /// The link faults this node's outgoing peer traffic obeys.
    pub fn faults(&self) -> &LinkFaults {
        &self.faults
    }

    /// The gate of the calls to peer `id` (see [`PeerGate`]).
    pub fn gate(&self, id: NodeId) -> Arc<PeerGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.entry(id).or_insert_with(|| Arc::new(PeerGate::new(id))).clone()
    }

    /// The cached channel to `addr`, created (without connecting) on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(super::url(addr, self.tls.is_some())).map_err(|e| e.to_string())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| e.to_string())?;
        }
        let channel = endpoint
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // A connection to a peer that stopped answering is closed within ~4 s (and
            // reopened on the next call) rather than waiting out TCP's retransmission backoff.
            .http2_keep_alive_interval(PEER_KEEPALIVE)
            .keep_alive_timeout(PEER_KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        let addr = self.peer_addr(target, &node.peer_addr).to_string();
        PeerClient {
            me: self.me,
            target,
            gate: self.gate(target),
            channel: self.channel(&addr),
            addr,
            faults: self.faults.clone(),
            incarnations: self.incarnations.clone(),
        }
    }
}

/// A peer API client for Raft messages, which may be as large as [`MAX_PEER_MESSAGE_BYTES`].
fn raft_client(channel: Channel) -> RaftPeerClient<Channel> {
    RaftPeerClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
}

/// Marks a call abandoned (and counts a failure) if its caller stops waiting before it is
/// answered, whether by its own timeout or because openraft dropped the future.
struct AbandonOnDrop<'a> {
    gate: &'a PeerGate,
    ticket: &'a CallTicket,
    ttl: Duration,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.gate.abandon(self.ticket) {
            self.gate
                .failed(&format_args!("no answer within {} ms", self.ttl.as_millis()));
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    me: Sender,
    target: NodeId,
    gate: Arc<PeerGate>,
    addr: String,
    channel: Result<Channel, String>,
    faults: LinkFaults,
    incarnations: IncarnationRegistry,
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

/// Which peer RPC a call is.
#[derive(Debug, Clone, Copy)]
enum PeerRpc {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
}

impl PeerRpc {
    /// openraft's name for it in timeouts (it has none for pre-vote: a vote round).
    fn kind(self) -> RPCTypes {
        match self {
            PeerRpc::AppendEntries => RPCTypes::AppendEntries,
            PeerRpc::Vote | PeerRpc::PreVote => RPCTypes::Vote,
            PeerRpc::TransferLeader => RPCTypes::TransferLeader,
        }
    }
}

impl PeerClient {
    /// The channel to the peer, unless the link is cut or the address is bad (`Unreachable`).
    fn reachable_channel(&self) -> Result<Channel, Unreachable<TypeConfig>> {
        if self.faults.is_blocked(self.target) {
            return Err(Unreachable::new(&LinkCut(self.target)));
        }
        self.channel.clone().map_err(|reason| {
            Unreachable::new(&BadPeerAddr {
                addr: self.addr.clone(),
                reason,
            })
        })
    }

    fn message(&self, payload: Vec<u8>) -> RaftMessage {
        RaftMessage {
            payload,
            from: self.me.id,
            incarnation: self.me.incarnation,
        }
    }

    fn timeout(&self, action: RPCTypes, ttl: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.me.id,
            target: self.target,
            timeout: ttl,
        }
    }

    /// A failed gRPC call, in openraft's terms.
    fn status_error(&self, action: RPCTypes, ttl: Duration, status: tonic::Status) -> RPCError<TypeConfig> {
        match status.code() {
            Code::Unavailable | Code::FailedPrecondition => RPCError::Unreachable(Unreachable::new(&status)),
            Code::DeadlineExceeded | Code::Cancelled => RPCError::Timeout(self.timeout(action, ttl)),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    /// Checks the replying peer's incarnation and decodes its payload.
    fn open_reply<Resp: DeserializeOwned>(&self, reply: RaftMessage) -> RpcResult<Resp> {
        if let Err(wiped) = self.incarnations.check(self.target, reply.incarnation) {
            tracing::error!(peer = self.target, "{wiped}");
            return Err(RPCError::Unreachable(Unreachable::new(&wiped)));
        }
        let result: PeerReply<Resp> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // A peer whose Raft stopped cannot help for a while: back off as for a peer that is down.
        result.map_err(|failure| RPCError::Unreachable(Unreachable::new(&failure)))
    }

    async fn call<Req, Resp>(&mut self, rpc: PeerRpc, req: &Req, option: &RPCOption) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let channel = self.reachable_channel().map_err(RPCError::Unreachable)?;
        let ticket = self.gate.admit().map_err(|held| {
            self.gate.failed(&held);
            RPCError::Unreachable(Unreachable::new(&held))
        })?;
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.soft_ttl();
        let mut request = tonic::Request::new(self.message(payload));
        // Not `ttl`: tonic enforces the grpc-timeout on the client side too, and a call it
        // times out resets its stream — the very thing the gate exists to avoid.
        request.set_timeout(ABANDONED_CALL_LIMIT);
        let mut client = raft_client(channel);
        // The call runs on a task of its own: if this caller stops waiting, the call is not
        // dropped (which would reset its HTTP/2 stream) but left to finish (see PeerGate).
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let (gate, task_ticket) = (self.gate.clone(), ticket.clone());
        tokio::spawn(async move {
            let call = async {
                match rpc {
                    PeerRpc::AppendEntries => client.append_entries(request).await,
                    PeerRpc::Vote => client.vote(request).await,
                    PeerRpc::PreVote => client.pre_vote(request).await,
                    PeerRpc::TransferLeader => client.transfer_leader(request).await,
                }
            };
            let answer = tokio::time::timeout(ABANDONED_CALL_LIMIT, call).await;
            gate.finish(&task_ticket);
            let _ = answer_tx.send(answer);
        });
        // openraft may drop this future at the same deadline (it times calls out too): the
        // guard then marks the call abandoned, so the gate holds until the peer answers it.
        let waiting = AbandonOnDrop {
            gate: &self.gate,
            ticket: &ticket,
            ttl,
        };
        let answer = match tokio::time::timeout(ttl, answer_rx).await {
            Ok(Ok(Ok(answer))) => answer,
            // No answer in time (or the call task is gone): leave the call to finish.
            Err(_) | Ok(Err(_)) | Ok(Ok(Err(_))) => {
                drop(waiting);
                return Err(RPCError::Timeout(self.timeout(rpc.kind(), ttl)));
            }
        };
        std::mem::forget(waiting);
        match answer {
            Err(status) => {
                let error = self.status_error(rpc.kind(), ttl, status);
                if matches!(error, RPCError::Unreachable(_) | RPCError::Timeout(_)) {
                    self.gate.failed(&error);
                }
                Err(error)
            }
            Ok(reply) => {
                self.gate.answered();
                self.open_reply(reply.into_inner())
            }
        }
    }

    /// Streams `snapshot` to the peer: first `(vote, meta)`, then the data in chunks. Each
    /// chunk must be taken within `chunk_ttl`; the peer then has [`SNAPSHOT_INSTALL_TIMEOUT`]
    /// to install it and answer.
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        chunk_bytes: usize,
        chunk_ttl: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let channel = self.reachable_channel()?;
        let head = codec::encode(&(vote, snapshot.meta)).map_err(|e| NetworkError::new(&e))?;
        let data = snapshot.snapshot.into_inner();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RaftMessage>(1);
        let messages = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut client = raft_client(channel);
        let call = client.install_snapshot(messages);
        tokio::pin!(call);
        let mut pending = std::iter::once(head)
            .chain(data.chunks(chunk_bytes.max(1)).map(<[u8]>::to_vec))
            .map(|payload| self.message(payload));
        // Feed the stream while driving the call: a chunk the peer does not take in time means
        // the link or the peer is stuck.
        for next in pending.by_ref() {
            let send = tx.send_timeout(next, chunk_ttl);
            tokio::select! {
                sent = send => {
                    if sent.is_err() {
                        return Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, chunk_ttl)));
                    }
                }
                early = &mut call => {
                    // The peer answered (or failed) before taking everything: a refusal.
                    return self.snapshot_reply(early, chunk_ttl);
                }
            }
        }
        drop(tx);
        match tokio::time::timeout(SNAPSHOT_INSTALL_TIMEOUT, call).await {
            Err(_) => Err(StreamingError::Timeout(
                self.timeout(RPCTypes::InstallSnapshot, SNAPSHOT_INSTALL_TIMEOUT),
            )),
            Ok(reply) => self.snapshot_reply(reply, chunk_ttl),
        }
    }

    /// A vote or pre-vote request; a refusal reaches openraft without the longer-log hint
    /// (see [`crate::consensus::election_assist::without_greater_log_hint`]).
    async fn vote_round(
        &mut self,
        rpc: PeerRpc,
        req: VoteRequest<TypeConfig>,
        option: &RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        let candidate_last_log = req.last_log_id;
        let resp: VoteResponse<TypeConfig> = self.call(rpc, &req, option).await?;
        Ok(crate::consensus::election_assist::without_greater_log_hint(
            resp,
            candidate_last_log,
        ))
    }

    fn snapshot_reply(
        &self,
        reply: Result<tonic::Response<RaftMessage>, tonic::Status>,
        ttl: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc_error = match reply {
            Ok(r) => match self.open_reply(r.into_inner()) {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            },
            Err(status) => self.status_error(RPCTypes::InstallSnapshot, ttl, status),
        };
        Err(match rpc_error {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        self.call(PeerRpc::AppendEntries, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> RpcResult<VoteResponse<TypeConfig>> {
        self.vote_round(PeerRpc::Vote, rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.vote_round(PeerRpc::PreVote, rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk_bytes = option.snapshot_chunk_size().unwrap_or(SNAPSHOT_CHUNK_BYTES as usize);
        let chunk_ttl = option.hard_ttl();
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.send_snapshot(vote, snapshot, chunk_bytes, chunk_ttl) => sent,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        self.call(PeerRpc::TransferLeader, &req, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_registry_refuses_a_changed_peer() {
        let r = IncarnationRegistry::default();
        r.check(2, 0xAA).unwrap();
        r.check(2, 0xAA).unwrap();
        r.check(3, 0xBB).unwrap();
        let err = r.check(2, 0xCC).unwrap_err();
        assert_eq!((err.peer, err.known, err.now), (2, 0xAA, 0xCC));
        // Unknown incarnation (0) never trips it.
        r.check(2, 0).unwrap();
    }

    #[test]
    fn link_faults_block_and_heal() {
        let f = LinkFaults::default();
        f.block(2);
        f.block(3);
        assert!(f.is_blocked(2));
        f.unblock(2);
        assert!(!f.is_blocked(2) && f.is_blocked(3));
        f.heal();
        assert!(!f.is_blocked(3));
    }
}
