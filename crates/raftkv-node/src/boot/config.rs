//! `NodeConfig`: every setting of a node in one struct, with defaults, flags, environment
//! variables and [`NodeConfig::validate`].
//!
//! Each flag can also be set by an environment variable (`RAFTKV_` + the flag in upper snake
//! case), so the same binary runs from a shell, a service manager or a container.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use raftkv_store::{NodeAddr, NodeId};

// The API's limits moved to `api::limits`; re-exported here for code that names them here.
pub use crate::api::limits::{MAX_KEY_BYTES, MAX_RANGE_LIMIT, MAX_RANGE_REPLY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};

/// The members a brand-new cluster starts with: `ID=CLIENT_ADDR@PEER_ADDR,...`.
///
/// The first listed node initializes the cluster, once, when its data directory is pristine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialCluster {
    members: Vec<(NodeId, NodeAddr)>,
}

impl InitialCluster {
    pub fn new(members: Vec<(NodeId, NodeAddr)>) -> Result<Self, ConfigError> {
        let ic = Self { members };
        ic.check()?;
        Ok(ic)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() {
            return Err(ConfigError::InitialCluster("it lists no member".into()));
        }
        let mut seen = BTreeMap::new();
        for (id, addr) in &self.members {
            if *id == 0 {
                return Err(ConfigError::InitialCluster("node ids start at 1".into()));
            }
            if seen.insert(*id, ()).is_some() {
                return Err(ConfigError::InitialCluster(format!("node id {id} is listed twice")));
            }
            for (what, a) in [("client", &addr.client_addr), ("peer", &addr.peer_addr)] {
                if a.parse::<SocketAddr>().is_err() && !looks_like_host_port(a) {
                    return Err(ConfigError::InitialCluster(format!(
                        "node {id}: {what} address {a:?} is not HOST:PORT"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The node that bootstraps the cluster.
    pub fn bootstrap_id(&self) -> NodeId {
        self.members[0].0
    }

    pub fn members(&self) -> &[(NodeId, NodeAddr)] {
        &self.members
    }

    pub fn get(&self, id: NodeId) -> Option<&NodeAddr> {
        self.members.iter().find(|(i, _)| *i == id).map(|(_, a)| a)
    }

    pub fn to_map(&self) -> BTreeMap<NodeId, NodeAddr> {
        self.members.iter().cloned().collect()
    }
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl FromStr for InitialCluster {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut members = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                ConfigError::InitialCluster(format!(
                    "{part:?} is not ID=CLIENT_ADDR@PEER_ADDR (e.g. 1=127.0.0.1:7001@127.0.0.1:7101)"
                ))
            };
            let (id, addrs) = part.split_once('=').ok_or_else(bad)?;
            let (client, peer) = addrs.split_once('@').ok_or_else(bad)?;
            let id: NodeId = id.trim().parse().map_err(|_| bad())?;
            members.push((
                id,
                NodeAddr {
                    client_addr: client.trim().to_string(),
                    peer_addr: peer.trim().to_string(),
                },
            ));
        }
        Self::new(members)
    }
}

impl fmt::Display for InitialCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .members
            .iter()
            .map(|(id, a)| format!("{id}={}@{}", a.client_addr, a.peer_addr))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `ID=HOST:PORT`: reach node ID's peer API at this address instead of the one in the
/// membership (for proxies and NAT; the chaos tests route every link through a proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub id: NodeId,
    pub addr: String,
}

impl FromStr for PeerRoute {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::PeerRoute(format!("{s:?} is not ID=HOST:PORT"));
        let (id, addr) = s.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        if !looks_like_host_port(addr) {
            return Err(bad());
        }
        Ok(Self {
            id,
            addr: addr.to_string(),
        })
    }
}

/// A node's configuration. Parsed from flags by `raftkvd`; built directly by tests.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeConfig {
    /// This node's id (1 or more). Never reuse the id of a removed node.
    #[arg(long, env = "RAFTKV_ID")]
    pub id: NodeId,

    /// Directory for this node's log, state and snapshots. Created if missing.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Address the client API (raftkv.v1.KV, Cluster) listens on.
    #[arg(long, env = "RAFTKV_CLIENT_ADDR", default_value = "127.0.0.1:7001")]
    pub client_addr: SocketAddr,

    /// Address the node-to-node API listens on.
    #[arg(long, env = "RAFTKV_PEER_ADDR", default_value = "127.0.0.1:7101")]
    pub peer_addr: SocketAddr,

    /// Members of a new cluster, `ID=CLIENT_ADDR@PEER_ADDR,...`. The first listed node
    /// initializes the cluster once; ignored when the data dir already holds Raft state, so a
    /// restart needs no change of flags. The addresses listed are the ones other nodes and
    /// clients use to reach each member.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<InitialCluster>,

    /// Join an existing cluster: client addresses of some of its members, comma-separated. A
    /// pristine node started with --join asks the cluster to add it (as a learner that is
    /// promoted to voter once caught up). Ignored once the node has Raft state.
    #[arg(long, env = "RAFTKV_JOIN", value_delimiter = ',', conflicts_with = "initial_cluster")]
    pub join: Vec<String>,

    /// An `admin` token for --join, when the cluster runs with --auth-file (adding a member
    /// needs that role). Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "RAFTKV_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// Client address other nodes and clients should use for this node (default: its
    /// --initial-cluster entry, else --client-addr).
    #[arg(long, env = "RAFTKV_ADVERTISE_CLIENT_ADDR")]
    pub advertise_client_addr: Option<String>,

    /// Peer address other nodes should use for this node (default: its --initial-cluster entry,
    /// else --peer-addr).
    #[arg(long, env = "RAFTKV_ADVERTISE_PEER_ADDR")]
    pub advertise_peer_addr: Option<String>,

    /// Leader heartbeat interval in milliseconds.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", default_value_t = 30)]
    pub heartbeat_ms: u64,

    /// Minimum election timeout in milliseconds (a follower that hears no leader for a random
    /// time in [min, max) starts an election).
    #[arg(long, env = "RAFTKV_ELECTION_MIN_MS", default_value_t = 70)]
    pub election_min_ms: u64,

    /// Maximum election timeout in milliseconds.
    #[arg(long, env = "RAFTKV_ELECTION_MAX_MS", default_value_t = 100)]
    pub election_max_ms: u64,

    /// Build a snapshot (and purge the log behind it) after this many new log entries (a
    /// quarter more on every second node and half more on every third, so the nodes of a
    /// cluster do not all pause to build one at the same moment).
    #[arg(long, env = "RAFTKV_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Log entries kept behind the last snapshot, so briefly lagging followers catch up from
    /// the log instead of a full snapshot.
    #[arg(long, env = "RAFTKV_SNAPSHOT_KEEP_LOGS", default_value_t = 1_000)]
    pub snapshot_keep_logs: u64,

    /// Revisions of changes kept in memory for watchers (also bounded to 64 MiB of keys and
    /// values). A watch can start this far back, and a watcher this far behind is cancelled.
    #[arg(long, env = "RAFTKV_WATCH_HISTORY", default_value_t = 10_000)]
    pub watch_history: u64,

    /// Longest a client request may run when the caller sets no deadline, in milliseconds.
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// sled page-cache size in MiB.
    #[arg(long, env = "RAFTKV_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,

    /// Size of the Raft log's segment files in MiB (each is preallocated when created).
    #[arg(long, env = "RAFTKV_WAL_SEGMENT_MB", default_value_t = 16)]
    pub wal_segment_mb: u64,

    /// Address of the HTTP endpoints /metrics (Prometheus), /healthz and /readyz (port 0: any
    /// free port).
    #[arg(long, env = "RAFTKV_METRICS_ADDR", default_value = "127.0.0.1:7201")]
    pub metrics_addr: Option<SocketAddr>,

    /// Also serve etcd's v3 API on this address, so etcd's clients and tools (etcdctl, the
    /// official client libraries) work against this node (off unless given; port 0: any free
    /// port). docs/etcd-compat.md lists what it covers.
    #[arg(long, env = "RAFTKV_ETCD_ADDR")]
    pub etcd_addr: Option<SocketAddr>,

    /// Reach a peer through another address than the membership's: `ID=HOST:PORT`; repeat or
    /// separate with commas.
    #[arg(long = "peer-route", env = "RAFTKV_PEER_ROUTES", value_delimiter = ',')]
    pub peer_routes: Vec<PeerRoute>,

    /// Access tokens, one per line: `NAME ROLE TOKEN` (ROLE: read, readwrite or admin). When
    /// set, every client call must carry `authorization: Bearer TOKEN` (docs/security.md).
    #[arg(long, env = "RAFTKV_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Client calls this node runs at once; one more is refused with RESOURCE_EXHAUSTED
    /// (`raftkv-error: overloaded`) rather than queued.
    #[arg(long, env = "RAFTKV_MAX_INFLIGHT_REQUESTS", default_value_t = 4096)]
    pub max_inflight_requests: usize,

    /// Concurrent calls on one client connection; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "RAFTKV_MAX_CALLS_PER_CONNECTION", default_value_t = 1024)]
    pub max_calls_per_connection: usize,

    /// Free space (MiB) the data directory's filesystem must keep: below it the node refuses
    /// writes (RESOURCE_EXHAUSTED, `raftkv-error: no-space`) until space is freed.
    #[arg(long, env = "RAFTKV_MIN_FREE_MB", default_value_t = 128)]
    pub min_free_mb: u64,

    /// PEM certificate the client API serves TLS with (with --tls-key).
    #[arg(long, env = "RAFTKV_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RAFTKV_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA of the client API: clients must present a certificate it signed (mutual TLS),
    /// and --join trusts the node it asks through it.
    #[arg(long, env = "RAFTKV_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM certificate for the peer API, served and presented to other nodes (with
    /// --peer-tls-key and --peer-tls-ca: peers always use mutual TLS).
    #[arg(long, env = "RAFTKV_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,

    /// PEM private key of --peer-tls-cert.
    #[arg(long, env = "RAFTKV_PEER_TLS_KEY", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,

    /// PEM CA that signed every node's peer certificate; a peer without one is refused.
    #[arg(long, env = "RAFTKV_PEER_TLS_CA", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,
}

/// A configuration that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--id must be 1 or more (0 means \"no node\" in the API)")]
    ZeroId,
    #[error("--initial-cluster: {0}")]
    InitialCluster(String),
    #[error("--initial-cluster does not list this node's id {0}; add `{0}=CLIENT_ADDR@PEER_ADDR`")]
    NotInInitialCluster(NodeId),
    #[error("--heartbeat-ms must be at least 1")]
    ZeroHeartbeat,
    #[error("--election-min-ms ({min}) must be below --election-max-ms ({max})")]
    ElectionRange { min: u64, max: u64 },
    #[error("--election-min-ms ({min}) must be more than twice --heartbeat-ms ({heartbeat}), or followers will time out between heartbeats")]
    ElectionVsHeartbeat { min: u64, heartbeat: u64 },
    #[error("--client-addr, --peer-addr and --metrics-addr must differ ({0} is used twice)")]
    SameAddr(SocketAddr),
    #[error("--snapshot-every must be at least 1")]
    ZeroSnapshotEvery,
    #[error("--watch-history must be at least 1 (revisions of changes kept for watchers)")]
    ZeroWatchHistory,
    #[error("--request-timeout-ms must be at least 1")]
    ZeroRequestTimeout,
    #[error("--cache-mb must be at least 1")]
    ZeroCache,
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    #[error("{0}")]
    Tls(String),
    #[error("--peer-route: {0}")]
    PeerRoute(String),
    #[error("{0}")]
    Advertise(String),
}

impl NodeConfig {
    /// A configuration with every default, for tests and embedding.
    pub fn new(id: NodeId, data_dir: PathBuf, client_addr: SocketAddr, peer_addr: SocketAddr) -> Self {
        Self {
            id,
            data_dir,
            client_addr,
            peer_addr,
            initial_cluster: None,
            heartbeat_ms: 30,
            election_min_ms: 70,
            election_max_ms: 100,
            snapshot_every: 10_000,
            snapshot_keep_logs: 1_000,
            watch_history: 10_000,
            request_timeout_ms: 30_000,
            cache_mb: 64,
            wal_segment_mb: 16,
            metrics_addr: None,
            etcd_addr: None,
            peer_routes: Vec::new(),
            join: Vec::new(),
            join_token: None,
            advertise_client_addr: None,
            advertise_peer_addr: None,
            auth_file: None,
            max_inflight_requests: 4096,
            max_calls_per_connection: 1024,
            min_free_mb: 128,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if let Some(ic) = &self.initial_cluster {
            ic.check()?;
            if ic.get(self.id).is_none() {
                return Err(ConfigError::NotInInitialCluster(self.id));
            }
        }
        if self.heartbeat_ms == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_min_ms >= self.election_max_ms {
            return Err(ConfigError::ElectionRange {
                min: self.election_min_ms,
                max: self.election_max_ms,
            });
        }
        if self.election_min_ms <= 2 * self.heartbeat_ms {
            return Err(ConfigError::ElectionVsHeartbeat {
                min: self.election_min_ms,
                heartbeat: self.heartbeat_ms,
            });
        }
        if self.client_addr == self.peer_addr && self.client_addr.port() != 0 {
            return Err(ConfigError::SameAddr(self.client_addr));
        }
        for m in [self.metrics_addr, self.etcd_addr].into_iter().flatten() {
            if m.port() != 0 && (m == self.client_addr || m == self.peer_addr) {
                return Err(ConfigError::SameAddr(m));
            }
        }
        if let (Some(m), Some(e)) = (self.metrics_addr, self.etcd_addr) {
            if m == e && m.port() != 0 {
                return Err(ConfigError::SameAddr(m));
            }
        }
        for (flag, addr) in [
            ("--advertise-client-addr", &self.advertise_client_addr),
            ("--advertise-peer-addr", &self.advertise_peer_addr),
        ] {
            if let Some(a) = addr {
                if !looks_like_host_port(a) {
                    return Err(ConfigError::Advertise(format!("{flag} {a:?} is not HOST:PORT")));
                }
            }
        }
        for a in &self.join {
            if !looks_like_host_port(a) {
                return Err(ConfigError::Advertise(format!("--join {a:?} is not HOST:PORT")));
            }
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::ZeroSnapshotEvery);
        }
        if self.watch_history == 0 {
            return Err(ConfigError::ZeroWatchHistory);
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::ZeroRequestTimeout);
        }
        if self.cache_mb == 0 {
            return Err(ConfigError::ZeroCache);
        }
        if self.wal_segment_mb == 0 {
            return Err(ConfigError::ZeroLimit("--wal-segment-mb"));
        }
        if self.max_inflight_requests == 0 {
            return Err(ConfigError::ZeroLimit("--max-inflight-requests"));
        }
        if self.max_calls_per_connection == 0 {
            return Err(ConfigError::ZeroLimit("--max-calls-per-connection"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some()
            || (self.tls_client_ca.is_some() && self.tls_cert.is_none())
        {
            return Err(ConfigError::Tls(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs them)".into(),
            ));
        }
        if !self.join.is_empty() && self.tls_cert.is_some() && self.tls_client_ca.is_none() {
            return Err(ConfigError::Tls(
                "--join to a TLS cluster needs --tls-client-ca: the CA the other nodes' client-API certificates are checked against".into(),
            ));
        }
        let peer = [&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca];
        if peer.iter().any(|p| p.is_some()) && !peer.iter().all(|p| p.is_some()) {
            return Err(ConfigError::Tls(
                "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together (peers use mutual TLS)".into(),
            ));
        }
        Ok(())
    }

    /// The shortest lease TTL this node grants: a few election timeouts (and at least a
    /// second), so a lease held alive through a failover cannot run out while the cluster
    /// elects a new leader — which then gives every lease a fresh TTL.
    pub fn min_lease_ttl_ms(&self) -> u64 {
        (5 * self.election_max_ms).max(1_000)
    }

    /// The openraft configuration these settings give.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "raftkv".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // Per chunk; chunks are 1 MiB, so this allows ~2 MiB/s on a struggling link.
            install_snapshot_timeout: 500.max(self.heartbeat_ms * 4),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_interval()),
            snapshot_max_chunk_size: crate::consensus::transport::network::SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: self.snapshot_keep_logs,
            // Keep lagging followers on the log a bit past the snapshot interval.
            replication_lag_threshold: self.snapshot_interval() + self.snapshot_keep_logs,
            purge_batch_size: 256,
            // Hand entries to replication as soon as they are appended, not at the end of
            // RaftCore's command batch (measured: +20 % puts/s at 16 clients, +10 % at 64).
            broadcast_submitted_on_append: Some(true),
            // A follower asks first whether it could win before it raises its term: a node that
            // was paused, cut off or restarted cannot depose a healthy leader when it returns.
            enable_pre_vote: Some(true),
            // A restarted leader stands for election like any node; it never leads again in
            // the term it led before. The leader sends entries before its own fsync of them
            // ends (the overlap above), so a crash can leave the followers holding entries it
            // lost; resuming its old term, it would write other entries under the same log ids,
            // which followers take as already present, and the replicas would diverge.
            // openraft 0.10 restores a leader by default; this must stay off.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
    }

    /// This node's snapshot interval: `--snapshot-every`, staggered by node id (+0, +25 %,
    /// +50 %) so the nodes of a cluster build their snapshots at different moments. Building
    /// one costs a node a scan and an encode of the whole state; all three at once starved the
    /// 2-core benchmark machine (put latency spikes and AppendEntries timeouts at the very
    /// index every node snapshotted).
    pub fn snapshot_interval(&self) -> u64 {
        let stagger = self.snapshot_every / 4 * ((self.id.saturating_sub(1)) % 3);
        self.snapshot_every.saturating_add(stagger)
    }

    /// Default deadline of a client request that carries none.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The addresses other nodes and clients use for this node: the --advertise flags, else its
    /// `--initial-cluster` entry, else the listen addresses.
    pub fn advertised(&self) -> NodeAddr {
        let listed = self.initial_cluster.as_ref().and_then(|ic| ic.get(self.id));
        NodeAddr {
            client_addr: self
                .advertise_client_addr
                .clone()
                .or_else(|| listed.map(|a| a.client_addr.clone()))
                .unwrap_or_else(|| self.client_addr.to_string()),
            peer_addr: self
                .advertise_peer_addr
                .clone()
                .or_else(|| listed.map(|a| a.peer_addr.clone()))
                .unwrap_or_else(|| self.peer_addr.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig::new(
            1,
            PathBuf::from("/tmp/x"),
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7101".parse().unwrap(),
        )
    }

    #[test]
    fn defaults_are_valid_and_give_a_valid_raft_config() {
        let c = cfg();
        c.validate().unwrap();
        c.raft_config().validate().unwrap();
    }

    #[test]
    fn the_nodes_of_a_cluster_snapshot_at_different_intervals() {
        let interval = |id| {
            let mut c = cfg();
            c.id = id;
            c.snapshot_every = 10_000;
            c.snapshot_interval()
        };
        assert_eq!([1, 2, 3, 4].map(interval), [10_000, 12_500, 15_000, 10_000]);
        let mut c = cfg();
        c.id = 2;
        c.snapshot_every = 10_000;
        assert!(matches!(
            c.raft_config().snapshot_policy,
            openraft::SnapshotPolicy::LogsSinceLast(12_500)
        ));
    }

    #[test]
    fn initial_cluster_parses_and_prints_back() {
        let s = "1=127.0.0.1:7001@127.0.0.1:7101,2=127.0.0.1:7002@127.0.0.1:7102";
        let ic: InitialCluster = s.parse().unwrap();
        assert_eq!(ic.bootstrap_id(), 1);
        assert_eq!(ic.get(2).unwrap().peer_addr, "127.0.0.1:7102");
        assert_eq!(ic.to_string(), s);
    }

    #[test]
    fn initial_cluster_rejects_what_cannot_work() {
        for bad in [
            "",
            "1=127.0.0.1:7001",
            "x=127.0.0.1:7001@127.0.0.1:7101",
            "0=127.0.0.1:7001@127.0.0.1:7101",
            "1=a:1@b:2,1=c:3@d:4",
            "1=127.0.0.1@127.0.0.1:7101",
        ] {
            assert!(bad.parse::<InitialCluster>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn peer_routes_parse() {
        let r: PeerRoute = "2=127.0.0.1:9002".parse().unwrap();
        assert_eq!((r.id, r.addr.as_str()), (2, "127.0.0.1:9002"));
        assert!("2".parse::<PeerRoute>().is_err());
        assert!("x=127.0.0.1:9002".parse::<PeerRoute>().is_err());
        assert!("2=nowhere".parse::<PeerRoute>().is_err());
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let mut c = cfg();
        c.election_min_ms = 300;
        assert!(matches!(c.validate(), Err(ConfigError::ElectionRange { .. })));
        let mut c = cfg();
        c.heartbeat_ms = 100;
        assert!(matches!(c.validate(), Err(ConfigError::ElectionVsHeartbeat { .. })));
        let mut c = cfg();
        c.initial_cluster = Some("2=127.0.0.1:7002@127.0.0.1:7102".parse().unwrap());
        assert_eq!(c.validate(), Err(ConfigError::NotInInitialCluster(1)));
        let mut c = cfg();
        c.id = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroId));
    }
}
