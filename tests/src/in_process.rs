//! `InProcessCluster`: N raftkv nodes inside the test process, talking gRPC over loopback.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::time::Duration;

use openraft::ServerState;
use raftkv_client::{Client, ClientConfig};
use raftkv_node::{InitialCluster, NodeConfig, RunningNode};
use raftkv_store::command::KeyValue;
use raftkv_store::{NodeAddr, NodeId};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::wait;

pub struct InProcessCluster {
    dir: TempDir,
    configs: BTreeMap<NodeId, NodeConfig>,
    nodes: BTreeMap<NodeId, RunningNode>,
}

impl InProcessCluster {
    /// Starts `n` nodes (ids 1..=n) that form a new cluster, with default settings.
    pub async fn start(n: u64) -> anyhow::Result<Self> {
        Self::start_with(n, |_| {}).await
    }

    /// Starts `n` nodes, letting `tune` adjust each node's configuration first.
    pub async fn start_with(n: u64, tune: impl Fn(&mut NodeConfig)) -> anyhow::Result<Self> {
        crate::init_tracing();
        let dir = TempDir::new()?;
        let mut listeners = BTreeMap::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let client = TcpListener::bind("127.0.0.1:0").await?;
            let peer = TcpListener::bind("127.0.0.1:0").await?;
            members.push((
                id,
                NodeAddr {
                    client_addr: client.local_addr()?.to_string(),
                    peer_addr: peer.local_addr()?.to_string(),
                },
            ));
            listeners.insert(id, (client, peer));
        }
        let initial = InitialCluster::new(members.clone())?;
        let mut cluster = Self {
            dir,
            configs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for (id, addr) in members {
            let mut config = NodeConfig::new(
                id,
                cluster.dir.path().join(format!("node{id}")),
                addr.client_addr.parse()?,
                addr.peer_addr.parse()?,
            );
            config.initial_cluster = Some(initial.clone());
            crate::harness_timings(&mut config);
            tune(&mut config);
            cluster.configs.insert(id, config);
        }
        for (id, (client, peer)) in listeners {
            let node = RunningNode::start_with_listeners(cluster.configs[&id].clone(), client, peer).await?;
            cluster.nodes.insert(id, node);
        }
        Ok(cluster)
    }

    pub fn node(&self, id: NodeId) -> &RunningNode {
        &self.nodes[&id]
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Cuts node `id` off from every other running node, both ways.
    pub fn isolate(&self, id: NodeId) {
        for other in self.running().into_iter().filter(|o| *o != id) {
            self.node(id).faults.block(other);
            self.node(other).faults.block(id);
        }
    }

    /// Restores every link between running nodes.
    pub fn heal_links(&self) {
        for id in self.running() {
            self.node(id).faults.heal();
        }
    }

    /// A running node other than `leader`.
    pub fn a_follower(&self, leader: NodeId) -> anyhow::Result<NodeId> {
        self.running()
            .into_iter()
            .find(|id| *id != leader)
            .ok_or_else(|| anyhow::anyhow!("no running node besides {leader}"))
    }

    /// Waits until node `id` has purged its log behind a snapshot (past the first few entries)
    /// and returns the purged index: after that, a node that was down can only catch up by
    /// snapshot.
    pub async fn wait_purged(&self, id: NodeId, timeout: Duration) -> anyhow::Result<u64> {
        // openraft purges once no replication task is reading the logs to purge; a stopped
        // follower's retries are in backoff most of the time, so the purge comes shortly.
        wait::until(timeout, "the leader to purge its log behind a snapshot", || async {
            let purged = self.node(id).raft.metrics().borrow_watched().purged;
            purged.map(|p| p.index).filter(|p| *p > 10)
        })
        .await
    }

    /// Client address of node `id` (running or not).
    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: NodeId) -> std::path::PathBuf {
        self.configs[&id].data_dir.clone()
    }

    pub fn client_addr(&self, id: NodeId) -> String {
        self.configs[&id].client_addr.to_string()
    }

    /// A client knowing every node of the cluster.
    pub fn client(&self) -> Client {
        self.client_with(|_| {})
    }

    /// A client knowing every node of the cluster, with `tweak` applied to its configuration.
    pub fn client_with(&self, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
        let endpoints: Vec<String> = self.configs.keys().map(|id| self.client_addr(*id)).collect();
        let mut config = ClientConfig::new(endpoints);
        tweak(&mut config);
        Client::new(config).expect("valid client config")
    }

    /// Waits until every running node agrees on one leader, which is among them, and that
    /// leader has settled in (the cluster id, a new cluster's first write, is recorded), and
    /// returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        wait::until(timeout, "an agreed leader", || async {
            let leaders: Vec<Option<NodeId>> = self
                .nodes
                .values()
                .map(|n| n.raft.metrics().borrow_watched().current_leader)
                .collect();
            let leader = leaders[0]?;
            let agreed = leaders.iter().all(|l| *l == Some(leader));
            let is_leader = self
                .nodes
                .get(&leader)
                .is_some_and(|n| n.raft.metrics().borrow_watched().state == ServerState::Leader);
            let settled = self
                .nodes
                .get(&leader)
                .is_some_and(|n| n.store.reader().cluster_id() != 0);
            (agreed && is_leader && settled).then_some(leader)
        })
        .await
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> anyhow::Result<()> {
        for (id, node) in &self.nodes {
            node.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), &format!("node {id} applies {index}"))
                .await?;
        }
        Ok(())
    }

    /// Waits until every running node holds the change with revision `revision` (and every
    /// one before it): its store revision has reached it.
    pub async fn wait_revision(&self, revision: u64, timeout: Duration) -> anyhow::Result<()> {
        for id in self.nodes.keys() {
            wait::until(timeout, &format!("node {id} to reach revision {revision}"), || async {
                (self.revision(*id) >= revision).then_some(())
            })
            .await?;
        }
        Ok(())
    }

    /// The store revision node `id` has applied.
    pub fn revision(&self, id: NodeId) -> u64 {
        self.nodes[&id].store.reader().revision()
    }

    /// The applied index of the leader `id`.
    pub fn applied_index(&self, id: NodeId) -> u64 {
        self.nodes[&id].store.reader().applied_index()
    }

    /// Every key-value node `id` holds.
    pub fn dump(&self, id: NodeId) -> anyhow::Result<Vec<KeyValue>> {
        Ok(self.nodes[&id].store.reader().dump()?)
    }

    /// Starts a pristine node `id` that is not a member (add it with `Client::add_member`);
    /// returns its client and peer addresses.
    pub async fn start_pristine(&mut self, id: NodeId, tune: impl Fn(&mut NodeConfig)) -> anyhow::Result<NodeAddr> {
        let peer = TcpListener::bind("127.0.0.1:0").await?;
        self.start_pristine_on(id, peer, tune).await
    }

    /// [`Self::start_pristine`] on a peer listener bound beforehand (its address was given to
    /// the cluster before the node started, as etcd's MemberAdd takes it).
    pub async fn start_pristine_on(
        &mut self,
        id: NodeId,
        peer: TcpListener,
        tune: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<NodeAddr> {
        let client = TcpListener::bind("127.0.0.1:0").await?;
        let mut config = NodeConfig::new(
            id,
            self.dir.path().join(format!("node{id}")),
            client.local_addr()?,
            peer.local_addr()?,
        );
        crate::harness_timings(&mut config);
        tune(&mut config);
        let addr = config.advertised();
        let node = RunningNode::start_with_listeners(config.clone(), client, peer).await?;
        self.configs.insert(id, config);
        self.nodes.insert(id, node);
        Ok(addr)
    }

    /// Shuts node `id` down cleanly; its data stays for [`Self::restart`].
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// Starts node `id` again from its data dir, on its old addresses.
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        anyhow::ensure!(!self.nodes.contains_key(&id), "node {id} is running");
        let config = self.configs[&id].clone();
        let node = RunningNode::start(config).await?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}
