//! Starting a node: `StartupError`, the data-directory checks, and the one-time bootstrap of a
//! new cluster.
//!
//! Bootstrap rule: a node initializes the cluster only if its data directory is pristine and it
//! is listed first in `--initial-cluster`. Before doing so it asks the other listed nodes
//! whether they already belong to a cluster; if one does, this node's directory was wiped (or
//! is the wrong one) and initializing would fork the cluster, so it refuses to start.

use std::time::Duration;

use openraft::errors::{InitializeError, RaftError};
use raftkv_proto::v1::raft_peer_client::RaftPeerClient;
use raftkv_proto::v1::HelloRequest;
use raftkv_store::types::Raft;
use raftkv_store::{NodeId, StoreSummary};

use crate::boot::config::{ConfigError, NodeConfig};
use crate::consensus::transport::network::PeerNetwork;

const HELLO_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a node did not start. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "data dir {dir} belongs to node {owner}, not node {requested}; pass --id {owner} or use another --data-dir"
    )]
    WrongNode {
        dir: String,
        owner: NodeId,
        requested: NodeId,
    },
    #[error("data dir {dir} is inconsistent: {detail}")]
    InconsistentDataDir { dir: String, detail: String },
    #[error("data dir {dir} is damaged: {what} is corrupt ({detail}). This node's copy cannot be trusted and it will not start. \
             If the rest of the cluster is healthy, remove this node (raftkv member remove ID) and add a new one with an empty data dir: \
             it copies the data from the others (docs/operations.md, \"Replacing a node\"). A single-node cluster: restore from a backup")]
    DamagedDataDir { dir: String, what: String, detail: String },
    #[error("cannot listen on {addr}: {source} (is another raftkvd already running there?)")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] raftkv_store::StoreError),
    #[error("this node's data dir is empty, but node {peer} ({addr}) already belongs to an initialized cluster (term {term}). \
             Initializing again would create a second cluster under the same ids. If this node's data was deleted, \
             remove it from the cluster and add a node with a new id; if the other nodes are leftovers of an old cluster, clean their data dirs first")]
    ClusterAlreadyExists { peer: NodeId, addr: String, term: u64 },
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// Refuses a store that has state-machine data but no Raft state: its log and vote were lost,
/// and running it could let it vote twice or serve data it cannot account for.
pub fn check_store(dir: &str, summary: &StoreSummary) -> Result<(), StartupError> {
    if !summary.has_raft_state() && !summary.is_pristine() {
        return Err(StartupError::InconsistentDataDir {
            dir: dir.to_string(),
            detail: format!(
                "it holds applied state (applied index {}, snapshot: {}, keys: {}) but no Raft log or vote. \
                 Do not reuse it: remove this node from the cluster and add one with a new id and an empty data dir",
                summary.last_applied_index, summary.has_snapshot, summary.has_user_data
            ),
        });
    }
    Ok(())
}

/// Initializes a new cluster when this node should (see the module docs).
pub async fn bootstrap(
    raft: &Raft,
    config: &NodeConfig,
    summary: &StoreSummary,
    network: &PeerNetwork,
) -> Result<(), StartupError> {
    if summary.has_raft_state() {
        tracing::info!(
            last_log = ?summary.last_log_id.map(|l| l.index),
            applied = summary.last_applied_index,
            "restarting with existing state; --initial-cluster is ignored"
        );
        return Ok(());
    }
    let Some(ic) = &config.initial_cluster else {
        tracing::info!(
            "data dir is pristine and no --initial-cluster was given: waiting for a leader to add this node"
        );
        return Ok(());
    };
    if ic.bootstrap_id() != config.id {
        tracing::info!(
            bootstrapper = ic.bootstrap_id(),
            "data dir is pristine: waiting for the first listed node to initialize the cluster"
        );
        return Ok(());
    }
    for (id, addr) in ic.members() {
        if *id == config.id {
            continue;
        }
        let Ok(channel) = network.channel(network.peer_addr(*id, &addr.peer_addr)) else {
            continue;
        };
        let mut client = RaftPeerClient::new(channel);
        let probe = client.hello(HelloRequest { from_id: config.id });
        // A peer that does not answer is not up yet: the leader will contact it once it is.
        let Ok(Ok(resp)) = tokio::time::timeout(HELLO_TIMEOUT, probe).await else {
            continue;
        };
        let resp = resp.into_inner();
        if resp.node_id != *id {
            tracing::warn!(
                expected = id,
                found = resp.node_id,
                addr = %addr.peer_addr,
                "a different node answers at a listed peer address; check --initial-cluster"
            );
        }
        if resp.initialized {
            return Err(StartupError::ClusterAlreadyExists {
                peer: resp.node_id,
                addr: addr.peer_addr.clone(),
                term: resp.term,
            });
        }
    }
    match raft.initialize(ic.to_map()).await {
        Ok(()) => {
            tracing::info!(members = %ic, "initialized a new cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            tracing::info!("cluster already initialized");
            Ok(())
        }
        Err(e) => Err(StartupError::Raft(format!("initialize failed: {e}"))),
    }
}
