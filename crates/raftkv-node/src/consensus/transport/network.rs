//! The client side of the peer transport: how this node's Raft reaches the others over gRPC.
//!
//! - One cached, lazily connected `Channel` per peer address, shared by every replication
//!   stream to that peer ([`PeerNetwork`]).
//! - Every RPC carries the deadline openraft passes (`RPCOption::soft_ttl`), both as the gRPC
//!   timeout (the server stops work past it) and as a local timeout.
//! - Failures are classified the way openraft's replication expects: a peer that cannot be
//!   reached is `Unreachable` (openraft backs off), a deadline is `Timeout`, anything else on
//!   the wire is `Network`, and an error returned by the remote Raft is `RemoteError`.
//! - An AppendEntries batch over [`APPEND_BYTES_BUDGET`] is refused locally as
//!   `PayloadTooLarge` with a hint, so openraft retries with fewer entries.
//! - [`LinkFaults`] lets tests cut links between in-process nodes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use raftkv_proto::v1::raft_peer_client::RaftPeerClient;
use raftkv_proto::v1::RaftMessage;
use raftkv_store::codec;
use raftkv_store::{NodeAddr, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// Largest peer message, in bytes (AppendEntries batches, snapshot chunks).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Soft size budget of one AppendEntries. openraft 0.9 gives every AppendEntries one heartbeat
/// interval (50 ms by default) to be sent, fsynced by the follower and answered; a batch larger
/// than this is refused locally as `PayloadTooLarge`, and openraft resends fewer entries. A
/// single entry is always sent, whatever its size.
pub const APPEND_BYTES_BUDGET: usize = 2 * 1024 * 1024;
/// Snapshot chunk size openraft uses when sending a snapshot.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
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

/// Builds peer clients for openraft; one per replication stream, all sharing cached channels.
#[derive(Clone)]
pub struct PeerNetwork {
    me: Sender,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
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
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
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
            channel: self.channel(&addr),
            addr,
            faults: self.faults.clone(),
            incarnations: self.incarnations.clone(),
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    me: Sender,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
    faults: LinkFaults,
    incarnations: IncarnationRegistry,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: RPCTypes,
        req: &Req,
        entry_count: Option<usize>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.is_blocked(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&LinkCut(self.target))));
        }
        let channel = match &self.channel {
            Ok(c) => c.clone(),
            Err(reason) => {
                let e = BadPeerAddr {
                    addr: self.addr.clone(),
                    reason: reason.clone(),
                };
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if payload.len() > APPEND_BYTES_BUDGET {
            if let Some(entries) = entry_count.filter(|n| *n > 1) {
                let fit = (entries as u128 * APPEND_BYTES_BUDGET as u128 / payload.len() as u128).max(1);
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64)));
            }
        }
        let ttl = option.soft_ttl();
        let mut request = tonic::Request::new(RaftMessage {
            payload,
            from: self.me.id,
            incarnation: self.me.incarnation,
        });
        request.set_timeout(ttl);
        let mut client = RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let call = async {
            match rpc {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let timeout_err = || {
            RPCError::Timeout(Timeout {
                action: rpc,
                id: self.me.id,
                target: self.target,
                timeout: ttl,
            })
        };
        let response = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(timeout_err()),
            Ok(Err(status)) => {
                return Err(match status.code() {
                    Code::Unavailable | Code::FailedPrecondition => RPCError::Unreachable(Unreachable::new(&status)),
                    Code::DeadlineExceeded | Code::Cancelled => timeout_err(),
                    _ => RPCError::Network(NetworkError::new(&status)),
                })
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        if let Err(wiped) = self.incarnations.check(self.target, response.incarnation) {
            tracing::error!(peer = self.target, "{wiped}");
            return Err(RPCError::Unreachable(Unreachable::new(&wiped)));
        }
        let result: Result<Resp, E> =
            codec::decode(&response.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let n = rpc.entries.len();
        self.call(RPCTypes::AppendEntries, &rpc, Some(n), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(RPCTypes::InstallSnapshot, &rpc, None, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        let candidate_last_log = rpc.last_log_id;
        let resp: VoteResponse<NodeId> = self.call(RPCTypes::Vote, &rpc, None, &option).await?;
        Ok(crate::consensus::election_assist::without_greater_log_hint(
            resp,
            candidate_last_log,
        ))
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
