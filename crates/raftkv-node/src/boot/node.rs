//! `RunningNode`: a started node — Raft, store, the two gRPC servers and the background
//! leadership watcher — and its orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use raftkv_proto::v1::cluster_server::ClusterServer;
use raftkv_proto::v1::kv_server::KvServer;
use raftkv_proto::v1::lease_server::LeaseServer;
use raftkv_proto::v1::raft_peer_server::RaftPeerServer;
use raftkv_proto::v1::watch_server::WatchServer;
use raftkv_store::command::{Command, Response};
use raftkv_store::types::Raft;
use raftkv_store::{NodeId, StoreConfig, StoreHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use raftkv_proto::etcd::etcdserverpb::auth_server::AuthServer as EtcdAuthServer;
use raftkv_proto::etcd::etcdserverpb::cluster_server::ClusterServer as EtcdClusterServer;
use raftkv_proto::etcd::etcdserverpb::kv_server::KvServer as EtcdKvServer;
use raftkv_proto::etcd::etcdserverpb::lease_server::LeaseServer as EtcdLeaseServer;
use raftkv_proto::etcd::etcdserverpb::maintenance_server::MaintenanceServer;
use raftkv_proto::etcd::etcdserverpb::watch_server::WatchServer as EtcdWatchServer;

use crate::admission::access::{AccessControl, Admission};
use crate::admission::disk_guard::DiskGuard;
use crate::admission::gate::{ClientGate, GateConfig};
use crate::api::call::ApiCalls;
use crate::api::cluster_service::ClusterService;
use crate::api::kv_service::KvService;
use crate::api::lease_service::LeaseService;
use crate::api::limits::MAX_VALUE_BYTES;
use crate::api::watch_service::WatchService;
use crate::boot::config::NodeConfig;
use crate::boot::identity;
use crate::boot::join;
use crate::boot::startup::{self, StartupError};
use crate::boot::tls::NodeTls;
use crate::consensus::core::NodeCore;
use crate::consensus::election_assist::ElectionAssist;
use crate::consensus::leadership;
use crate::consensus::lease_keeper::LeaseKeeper;
use crate::consensus::read_index::ReadPath;
use crate::consensus::removal::Removal;
use crate::consensus::transport::network::{
    IncarnationRegistry, LinkFaults, PeerNetwork, Sender, MAX_PEER_MESSAGE_BYTES,
};
use crate::consensus::transport::peer_service::PeerService;
use crate::consensus::write_batcher::WriteBatcher;
use crate::etcd::auth::EtcdAuth;
use crate::etcd::forward::LeaderForwarder;
use crate::etcd::kv::EtcdKv;
use crate::etcd::lease::EtcdLease;
use crate::etcd::maintenance::EtcdMaintenance;
use crate::etcd::watch::EtcdWatch;
use crate::ops::health::{self, HealthState};
use crate::ops::http;
use crate::ops::metrics::NodeMetrics;

/// Largest client request accepted: a maximal value plus room for the key and framing, so an
/// oversized value gets our own clear InvalidArgument rather than a transport error.
const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * MAX_VALUE_BYTES;
/// How often, and how far apart, a new leader tries to record the cluster id.
const CLUSTER_ID_ATTEMPTS: u32 = 20;
const CLUSTER_ID_RETRY: Duration = Duration::from_millis(50);
/// How long shutdown waits for in-flight client requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running raftkv node.
pub struct RunningNode {
    pub id: NodeId,
    pub raft: Raft,
    pub store: StoreHandle,
    /// Where the client API actually listens (useful when configured with port 0).
    pub client_addr: SocketAddr,
    /// Where the peer API actually listens.
    pub peer_addr: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where etcd's v3 API is served, when `--etcd-addr` was given.
    pub etcd_addr: Option<SocketAddr>,
    /// Test hook to cut this node's outgoing peer links.
    pub faults: LinkFaults,
    /// The node's current health verdict.
    pub health: HealthState,
    /// Set when the node hit an error it cannot recover from (e.g. the cluster refused to add
    /// it); the daemon then stops.
    pub fatal: watch::Receiver<Option<String>>,
    removal: Removal,
    shutdown: watch::Sender<bool>,
    client_server: JoinHandle<()>,
    peer_server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).await.map_err(|source| StartupError::Bind {
        addr: addr.to_string(),
        source,
    })
}

impl RunningNode {
    /// Binds the configured addresses and starts the node.
    pub async fn start(config: NodeConfig) -> Result<Self, StartupError> {
        config.validate()?;
        let client = bind(config.client_addr).await?;
        let peer = bind(config.peer_addr).await?;
        Self::start_with_listeners(config, client, peer).await
    }

    /// Starts the node on listeners the caller has bound (tests bind port 0 first).
    pub async fn start_with_listeners(
        config: NodeConfig,
        client_listener: TcpListener,
        peer_listener: TcpListener,
    ) -> Result<Self, StartupError> {
        config.validate()?;
        let client_addr = client_listener
            .local_addr()
            .map_err(|e| StartupError::Io(e.to_string()))?;
        let peer_addr = peer_listener
            .local_addr()
            .map_err(|e| StartupError::Io(e.to_string()))?;

        let tls = NodeTls::load(&config).map_err(StartupError::Io)?;
        let access = match &config.auth_file {
            Some(path) => Some(Arc::new(AccessControl::load(path).map_err(StartupError::Io)?)),
            None => None,
        };
        if access.is_some() && tls.peer_server.is_none() && !config.peer_addr.ip().is_loopback() {
            tracing::warn!(
                peer_addr = %config.peer_addr,
                "tokens guard the client API only: without --peer-tls-* anyone who reaches the peer port can send Raft messages; \
                 turn on peer TLS or firewall the peer port"
            );
        }
        let found_identity = identity::load(&config.data_dir, config.id)?;
        let store_config = StoreConfig {
            cache_capacity_bytes: config.cache_mb * 1024 * 1024,
            wal: raftkv_store::wal::WalOptions {
                segment_bytes: config.wal_segment_mb.saturating_mul(1024 * 1024),
                ..Default::default()
            },
            watch_history_revisions: config.watch_history,
            ..StoreConfig::default()
        };
        let metrics = NodeMetrics::new(config.id).map_err(|e| StartupError::Io(format!("metrics: {e}")))?;
        let data_dir = config.data_dir.clone();
        let observer: Arc<dyn raftkv_store::StoreObserver> = metrics.clone();
        let store =
            tokio::task::spawn_blocking(move || raftkv_store::open_observed(&data_dir, &store_config, observer))
                .await
                .map_err(|e| StartupError::Io(format!("store open task failed: {e}")))?
                .map_err(|e| match e {
                    // A record read while opening (last applied index, cluster id...) is damaged.
                    raftkv_store::StoreError::Codec(c) => StartupError::DamagedDataDir {
                        dir: config.data_dir.display().to_string(),
                        what: format!("a record read at open in {}", config.data_dir.join("db").display()),
                        detail: c.to_string(),
                    },
                    // A damaged write-ahead log record, found while the log is opened.
                    raftkv_store::StoreError::Corrupt { what, detail } => StartupError::DamagedDataDir {
                        dir: config.data_dir.display().to_string(),
                        what,
                        detail,
                    },
                    other => other.into(),
                })?;
        verify_store(&config.data_dir, &store.handle).await?;
        let disk = DiskGuard::new(config.data_dir.clone(), config.min_free_mb.saturating_mul(1024 * 1024));
        if let Err(e) = disk.check() {
            tracing::warn!(dir = %config.data_dir.display(), "cannot read free disk space: {e}");
        }
        let summary = store.handle.summary()?;
        startup::check_store(&config.data_dir.display().to_string(), &summary)?;
        let identity = identity::ensure(&config.data_dir, config.id, found_identity, summary.is_pristine())?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let etcd_listener = match config.etcd_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };

        let me = Sender {
            id: config.id,
            incarnation: identity.incarnation,
        };
        let faults = LinkFaults::default();
        let incarnations = IncarnationRegistry::default();
        let network = PeerNetwork::new(me, faults.clone(), incarnations.clone())
            .with_routes(config.peer_routes.iter().map(|r| (r.id, r.addr.clone())))
            .with_tls(tls.peer_connect.clone());
        let raft_config = config
            .raft_config()
            .validate()
            .map_err(|e| StartupError::Config(crate::boot::config::ConfigError::InitialCluster(e.to_string())))?;
        let handle = store.handle.clone();
        // Built, not started: what must hold before the first tick (an election hold after a
        // restart) is set up first, then `run` starts Raft.
        let raft = Raft::build(
            config.id,
            Arc::new(raft_config),
            network.clone(),
            store.log_store,
            store.state_machine,
        )
        .await
        .map_err(|e| StartupError::Raft(e.to_string()))?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (fatal_tx, fatal) = watch::channel(None);
        let read_path = ReadPath::new(config.id, raft.clone(), network.clone());
        let removal = Removal::new(&config.data_dir);
        let core_removal = removal.clone();
        let core = NodeCore {
            id: config.id,
            raft: raft.clone(),
            store: handle.clone(),
            read_path: read_path.clone(),
            removal: removal.clone(),
            peers: network.clone(),
            writes: WriteBatcher::new(config.id, raft.clone(), crate::consensus::core::now_millis),
            disk: disk.clone(),
            leader_contact: leadership::LeaderContact::default(),
        };

        let assist = ElectionAssist::new(
            raft.clone(),
            config.id,
            std::time::Duration::from_millis(config.election_min_ms),
            core.leader_contact.clone(),
        );
        raft.run();
        let peer_service = PeerService::new(
            raft.clone(),
            me,
            handle.clone(),
            incarnations,
            read_path.confirm,
            removal,
            assist,
        );
        let peer_service = RaftPeerServer::new(peer_service)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let peer_server = spawn_server(
            "peer",
            with_tls(Server::builder(), &tls.peer_server, "peer")?.add_service(peer_service),
            peer_listener,
            shutdown_rx.clone(),
        );
        let calls = ApiCalls::new(core.clone(), metrics.clone(), config.request_timeout());
        let gate = Arc::new(GateConfig {
            node: config.id,
            access,
            admission: Admission::new(config.max_inflight_requests),
            metrics: metrics.clone(),
        });
        let kv = ClientGate::new(
            KvServer::new(KvService::new(calls.clone())).max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
            gate.clone(),
            MAX_CLIENT_MESSAGE_BYTES,
        );
        // Its requests are small: gRPC's default 4 MiB decoding limit applies.
        let watch = ClientGate::new(
            WatchServer::new(WatchService::new(calls.clone(), shutdown_rx.clone())),
            gate.clone(),
            4 * 1024 * 1024,
        );
        let lease_keeper = LeaseKeeper::default();
        let lease = ClientGate::new(
            LeaseServer::new(LeaseService::new(
                calls.clone(),
                lease_keeper.clone(),
                config.min_lease_ttl_ms(),
            )),
            gate.clone(),
            4 * 1024 * 1024,
        );
        // One forwarder for every etcd service: writes, lease and membership calls that reach a
        // follower share its route to the leader.
        let etcd_forwarder = Arc::new(LeaderForwarder::new(tls.client_server.is_none()));
        let etcd_kv = ClientGate::new(
            EtcdKvServer::new(EtcdKv::new(calls.clone(), etcd_forwarder.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
            gate.clone(),
            MAX_CLIENT_MESSAGE_BYTES,
        );
        let etcd_bound = match &etcd_listener {
            Some(l) => Some(l.local_addr().map_err(|e| StartupError::Io(e.to_string()))?.to_string()),
            None => None,
        };
        let etcd_lease = ClientGate::new(
            EtcdLeaseServer::new(EtcdLease::new(
                LeaseService::new(calls.clone(), lease_keeper.clone(), config.min_lease_ttl_ms()),
                etcd_forwarder.clone(),
                config.min_lease_ttl_ms(),
            )),
            gate.clone(),
            4 * 1024 * 1024,
        );
        let etcd_watch = ClientGate::new(
            EtcdWatchServer::new(EtcdWatch::new(
                calls.clone(),
                WatchService::new(calls.clone(), shutdown_rx.clone()),
            )),
            gate.clone(),
            4 * 1024 * 1024,
        );
        let etcd_auth = ClientGate::new(
            EtcdAuthServer::new(EtcdAuth::new(core.clone(), gate.access.clone())),
            gate.clone(),
            4 * 1024 * 1024,
        );
        let etcd_maintenance = Arc::new(EtcdMaintenance::new(
            ClusterService::new(calls.clone()).with_etcd_addr(etcd_bound.clone()),
            etcd_bound.clone().unwrap_or_default(),
            etcd_forwarder,
        ));
        let etcd_maintenance_server = ClientGate::new(
            MaintenanceServer::from_arc(etcd_maintenance.clone()),
            gate.clone(),
            4 * 1024 * 1024,
        );
        let etcd_cluster_server = ClientGate::new(
            EtcdClusterServer::from_arc(etcd_maintenance),
            gate.clone(),
            4 * 1024 * 1024,
        );
        let cluster = ClientGate::new(
            ClusterServer::new(ClusterService::new(calls).with_etcd_addr(etcd_bound)),
            gate,
            4 * 1024 * 1024,
        );
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftkv_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("raftkv.v1.KV")
            .with_service_name("raftkv.v1.Cluster")
            .with_service_name("raftkv.v1.Watch")
            .with_service_name("raftkv.v1.Lease")
            .with_service_name("grpc.health.v1.Health")
            .build_v1()
            .map_err(|e| StartupError::Io(format!("reflection: {e}")))?;
        let client_server = spawn_server(
            "client",
            with_tls(Server::builder(), &tls.client_server, "client")?
                .timeout(config.request_timeout())
                .concurrency_limit_per_connection(config.max_calls_per_connection)
                .load_shed(true)
                .add_service(kv)
                .add_service(watch)
                .add_service(lease)
                .add_service(cluster)
                .add_service(health_service)
                .add_service(reflection),
            client_listener,
            shutdown_rx.clone(),
        );
        let health = HealthState::default();
        let mut background = vec![
            disk.spawn(shutdown_rx.clone()),
            tokio::spawn(lease_keeper.run(core.clone(), shutdown_rx.clone())),
            tokio::spawn(watch_leadership(core.clone(), metrics.clone(), shutdown_rx.clone())),
            health::spawn_checker(
                core.clone(),
                health_reporter,
                health.clone(),
                config.election_max_ms,
                shutdown_rx.clone(),
            ),
        ];
        let etcd_addr = match etcd_listener {
            Some(listener) => {
                let addr = listener.local_addr().map_err(|e| StartupError::Io(e.to_string()))?;
                background.push(spawn_server(
                    "etcd",
                    with_tls(Server::builder(), &tls.client_server, "etcd")?
                        .timeout(config.request_timeout())
                        .concurrency_limit_per_connection(config.max_calls_per_connection)
                        .load_shed(true)
                        .add_service(etcd_kv)
                        .add_service(etcd_lease)
                        .add_service(etcd_watch)
                        .add_service(etcd_auth)
                        .add_service(etcd_maintenance_server)
                        .add_service(etcd_cluster_server),
                    listener,
                    shutdown_rx.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let addr = listener.local_addr().map_err(|e| StartupError::Io(e.to_string()))?;
                background.push(http::serve_http(listener, metrics, core, health.clone(), shutdown_rx));
                Some(addr)
            }
            None => None,
        };

        tracing::info!(
            id = config.id,
            %client_addr,
            %peer_addr,
            metrics_addr = ?metrics_addr,
            etcd_addr = ?etcd_addr,
            data_dir = %config.data_dir.display(),
            "node started"
        );
        let node = Self {
            id: config.id,
            raft,
            store: handle,
            client_addr,
            peer_addr,
            metrics_addr,
            etcd_addr,
            faults,
            health,
            fatal,
            removal: core_removal,
            shutdown,
            client_server,
            peer_server,
            background,
        };
        if let Err(e) = startup::bootstrap(&node.raft, &config, &summary, &network).await {
            node.shutdown().await;
            return Err(e);
        }
        if !summary.has_raft_state() && !config.join.is_empty() {
            tokio::spawn(join::join(
                config.id,
                config.advertised(),
                config.join.clone(),
                config.join_token.clone(),
                tls.client_connect.clone(),
                fatal_tx,
            ));
        }
        Ok(node)
    }

    /// If this node leads a cluster of several voters, gives leadership to its most up-to-date
    /// follower, so that stopping it costs clients one hand-off rather than an election timeout.
    async fn hand_over_leadership(&self) {
        let (leading, voters) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.state == ServerState::Leader,
                m.membership_config.membership().voter_ids().count(),
            )
        };
        if !leading || voters < 2 || self.removal.is_removed() {
            return;
        }
        match leadership::transfer(&self.raft, self.id, None).await {
            Ok(to) => tracing::info!(to, "handed leadership to node {to} before stopping"),
            Err(e) => {
                tracing::warn!("could not hand leadership over before stopping ({e}); the others will elect a leader")
            }
        }
    }

    /// Whether this node knows it was removed from its cluster.
    pub fn removal_is_marked(&self) -> bool {
        self.removal.is_removed()
    }

    /// Stops the node in order: hand leadership over if it leads, stop taking client calls
    /// (letting in-flight ones finish), stop Raft, stop the peer API, flush the store.
    pub async fn shutdown(self) {
        tracing::info!(id = self.id, "shutting down");
        self.hand_over_leadership().await;
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, self.client_server).await.is_err() {
            tracing::warn!("client requests did not drain in time");
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.peer_server).await;
        for task in self.background {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!("final flush failed: {e}");
        }
        tracing::info!(id = self.id, "stopped");
    }
}

/// Checks every stored payload's checksum before the node serves anything from them.
async fn verify_store(dir: &std::path::Path, handle: &raftkv_store::StoreHandle) -> Result<(), StartupError> {
    let started = std::time::Instant::now();
    let h = handle.clone();
    let report = tokio::task::spawn_blocking(move || h.verify())
        .await
        .map_err(|e| StartupError::Io(format!("store check task failed: {e}")))?
        .map_err(|e| match e {
            raftkv_store::StoreError::Corrupt { what, detail } => StartupError::DamagedDataDir {
                dir: dir.display().to_string(),
                what,
                detail,
            },
            other => StartupError::Store(other),
        })?;
    tracing::info!(
        log_entries = report.log_entries,
        state_records = report.state_records,
        snapshot_bytes = report.snapshot_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checked every stored payload's checksum"
    );
    Ok(())
}

/// `builder` serving TLS with `tls`, when it is set.
fn with_tls(builder: Server, tls: &Option<ServerTlsConfig>, api: &str) -> Result<Server, StartupError> {
    match tls {
        Some(tls) => builder
            .tls_config(tls.clone())
            .map_err(|e| StartupError::Io(format!("{api} API TLS: {e}"))),
        None => Ok(builder),
    }
}

fn spawn_server(
    name: &'static str,
    router: tonic::transport::server::Router,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let signal = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(server = name, "gRPC server failed: {e}");
        }
    })
}

/// Logs leadership changes, and has a new leader record the cluster id if none is set yet.
async fn watch_leadership(core: NodeCore, metrics_sink: Arc<NodeMetrics>, mut shutdown: watch::Receiver<bool>) {
    let mut metrics = core.raft.server_metrics();
    let mut last_leader: Option<NodeId> = None;
    let mut last_state = ServerState::Learner;
    let mut proposed_in_term = None;
    loop {
        let m = metrics.borrow_and_update().clone();
        let term = m.vote.leader_id().term;
        if m.current_leader != last_leader {
            metrics_sink.leader_changed();
            match m.current_leader {
                Some(leader) => tracing::info!(term, leader, "leader elected"),
                None => tracing::info!(term, previous = ?last_leader, "leader lost"),
            }
            last_leader = m.current_leader;
        }
        if m.state != last_state {
            tracing::info!(term, role = ?m.state, "role changed");
            last_state = m.state;
        }
        if m.state == ServerState::Leader && core.store.reader().cluster_id() == 0 && proposed_in_term != Some(term) {
            proposed_in_term = Some(term);
            let core = core.clone();
            tokio::spawn(async move {
                let cluster_id = rand::random::<u64>() | 1;
                // A new leader refuses writes until a quorum has acknowledged it (openraft's
                // check-quorum lease), so the first try may come too early: retry while this
                // node still leads in this term.
                for attempt in 0..CLUSTER_ID_ATTEMPTS {
                    if attempt > 0 {
                        tokio::time::sleep(CLUSTER_ID_RETRY).await;
                    }
                    let still_leading = {
                        let m = core.raft.metrics();
                        let m = m.borrow_watched();
                        m.state == ServerState::Leader && m.vote.leader_id().term == term
                    };
                    if !still_leading || core.store.reader().cluster_id() != 0 {
                        return;
                    }
                    match core.write(Command::SetClusterId { cluster_id }, None).await {
                        Ok(Response::ClusterId { cluster_id }) => {
                            tracing::info!(cluster_id = format!("{cluster_id:016x}"), "cluster id set");
                            return;
                        }
                        Ok(other) => {
                            tracing::warn!(?other, "unexpected reply to SetClusterId");
                            return;
                        }
                        Err(e) => tracing::debug!(attempt, "cluster id not recorded yet: {e}"),
                    }
                }
            });
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
