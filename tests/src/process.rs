//! `ProcessCluster`: real `raftkvd` processes on loopback, for crash tests.
//!
//! Every process it starts is killed when the cluster is dropped (also when a test panics, in
//! which case the nodes' logs are printed to help diagnose the failure).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raftkv_client::pb::{Consistency, KeyValue, RangeRequest, Role};
use raftkv_client::{Client, ClientConfig};
use raftkv_store::NodeId;
use tempfile::TempDir;

use crate::{free_port, wait, workspace_binary};

struct ProcNode {
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    child: Option<Child>,
    /// Flags for this node only (e.g. `--peer-route`).
    flags: Vec<String>,
    /// Added after the start (pristine, waiting to be added): not in --initial-cluster.
    added: bool,
}

impl ProcNode {
    /// A node not started yet, on three free loopback ports.
    fn on_free_ports(flags: Vec<String>, added: bool) -> Self {
        Self {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            child: None,
            flags,
            added,
        }
    }
}

pub struct ProcessCluster {
    dir: TempDir,
    bin: PathBuf,
    nodes: BTreeMap<NodeId, ProcNode>,
    extra_flags: Vec<String>,
    /// The token the harness's own clients send (for nodes started with `--auth-file`).
    pub token: Option<String>,
}

impl ProcessCluster {
    /// Starts `n` raftkvd processes (ids 1..=n) forming a new cluster.
    pub fn start(n: u64) -> anyhow::Result<Self> {
        Self::start_with_flags(n, &[])
    }

    /// Like [`Self::start`], passing `flags` to every node.
    pub fn start_with_flags(n: u64, flags: &[&str]) -> anyhow::Result<Self> {
        let mut cluster = Self::prepare(n, flags, workspace_binary("raftkvd"))?;
        for id in 1..=n {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }

    /// Allocates ports and a data dir for `n` nodes (ids 1..=n) without starting them, so a
    /// caller can add per-node flags first; `bin` is the raftkvd to run.
    pub fn prepare(n: u64, flags: &[&str], bin: PathBuf) -> anyhow::Result<Self> {
        crate::init_tracing();
        let mut cluster = Self {
            dir: TempDir::new()?,
            bin,
            nodes: BTreeMap::new(),
            extra_flags: Vec::new(),
            token: None,
        };
        // The harness's timings, unless the caller sets its own.
        if !flags
            .iter()
            .any(|f| f.starts_with("--heartbeat-ms") || f.starts_with("--election-"))
        {
            cluster
                .extra_flags
                .extend(crate::HARNESS_TIMING_FLAGS.iter().map(|s| s.to_string()));
        }
        cluster.extra_flags.extend(flags.iter().map(|s| s.to_string()));
        for id in 1..=n {
            cluster.nodes.insert(id, ProcNode::on_free_ports(Vec::new(), false));
        }
        Ok(cluster)
    }

    /// Ids of the cluster's nodes (running or not).
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The port node `id`'s peer API listens on.
    pub fn peer_port(&self, id: NodeId) -> u16 {
        self.nodes[&id].peer_port
    }

    /// Sets flags passed to node `id` only, from its next start on.
    pub fn set_node_flags(&mut self, id: NodeId, flags: Vec<String>) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.flags = flags;
        }
    }

    /// Whether node `id` has a process (running or paused).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    /// Copies every node's log into `dir`.
    pub fn save_logs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        for id in self.nodes.keys() {
            std::fs::write(dir.join(format!("node{id}.log")), self.logs(*id))?;
        }
        Ok(())
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.added)
            .map(|(id, n)| format!("{id}=127.0.0.1:{}@127.0.0.1:{}", n.client_port, n.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// The arguments raftkvd is started with for node `id`.
    pub fn node_args(&self, id: NodeId) -> Vec<String> {
        let n = &self.nodes[&id];
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--data-dir".into(),
            self.data_dir(id).display().to_string(),
            "--client-addr".into(),
            format!("127.0.0.1:{}", n.client_port),
            "--peer-addr".into(),
            format!("127.0.0.1:{}", n.peer_port),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", n.metrics_port),
        ];
        if !n.added {
            args.extend(["--initial-cluster".to_string(), self.initial_cluster()]);
        }
        args.extend(self.extra_flags.iter().cloned());
        args.extend(n.flags.iter().cloned());
        args
    }

    /// Starts a pristine node `id` that is not a member yet (add it with
    /// `Client::add_member`, or pass `--join` in `flags`); returns its `CLIENT@PEER`.
    pub fn start_added_node(&mut self, id: NodeId, flags: Vec<String>) -> anyhow::Result<String> {
        anyhow::ensure!(!self.nodes.contains_key(&id), "node {id} exists");
        self.nodes.insert(id, ProcNode::on_free_ports(flags, true));
        self.start_node(id)?;
        let n = &self.nodes[&id];
        Ok(format!("127.0.0.1:{}@127.0.0.1:{}", n.client_port, n.peer_port))
    }

    pub fn peer_addr(&self, id: NodeId) -> String {
        format!("127.0.0.1:{}", self.nodes[&id].peer_port)
    }

    /// Starts (or restarts) node `id` with its data dir.
    pub fn start_node(&mut self, id: NodeId) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes[&id].child.is_none(), "node {id} is running");
        let log = File::options().create(true).append(true).open(self.log_path(id))?;
        let child = Command::new(&self.bin)
            .args(self.node_args(id))
            .env("RUST_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.nodes.get_mut(&id).expect("known node").child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id` (a crash) and reaps it.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `id` and waits (up to `timeout`) for it to exit; returns its exit
    /// code (None if it did not exit in time, in which case it is killed).
    pub async fn terminate(&mut self, id: NodeId, timeout: Duration) -> Option<i32> {
        let mut child = self.nodes.get_mut(&id).and_then(|n| n.child.take())?;
        // SAFETY: kill(2) on a PID we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let exited = wait::until(timeout, "the node to exit", || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        match exited {
            Ok(status) => status.code(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to node `id`.
    pub fn signal(&self, id: NodeId, signal: i32) {
        if let Some(child) = &self.nodes[&id].child {
            // SAFETY: kill(2) on a PID we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Address of node `id`'s /metrics, /healthz and /readyz.
    pub fn metrics_addr(&self, id: NodeId) -> String {
        format!("127.0.0.1:{}", self.nodes[&id].metrics_port)
    }

    pub fn client_addr(&self, id: NodeId) -> String {
        format!("127.0.0.1:{}", self.nodes[&id].client_port)
    }

    /// A client that knows the given nodes.
    pub fn client_for(&self, ids: &[NodeId], timeout: Duration) -> Client {
        let mut config = ClientConfig::new(ids.iter().map(|id| self.client_addr(*id)));
        config.timeout = timeout;
        config.token = self.token.clone().map(raftkv_client::Token::new);
        Client::new(config).expect("valid client config")
    }

    /// A client that knows every node.
    pub fn client(&self) -> Client {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.client_for(&ids, Duration::from_secs(5))
    }

    /// Waits until a node among `among` reports itself leader and the others agree; returns it.
    pub async fn wait_for_leader(&self, among: &[NodeId], timeout: Duration) -> anyhow::Result<NodeId> {
        let client = self.client_for(among, Duration::from_millis(500));
        wait::until(timeout, "an agreed leader", || async {
            let mut leader = None;
            for id in among {
                let s = client
                    .status_of(&self.client_addr(*id), Duration::from_millis(300))
                    .await
                    .ok()?;
                if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                    return None;
                }
                leader = Some(s.leader_id);
                if s.id == s.leader_id && s.role != Role::Leader as i32 {
                    return None;
                }
            }
            leader.filter(|l| among.contains(l))
        })
        .await
        .map_err(|e| e.context(self.log_tails(among, 8)))
    }

    /// The last `lines` lines of each node's log, for a failure message.
    pub fn log_tails(&self, ids: &[NodeId], lines: usize) -> String {
        let mut out = String::from("node logs (last lines):");
        for id in ids {
            let log = self.logs(*id);
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            out.push_str(&format!("\n--- node {id}:"));
            for line in tail.into_iter().rev() {
                out.push_str("\n  ");
                out.push_str(line);
            }
        }
        out
    }

    /// The applied index node `id` reports.
    pub async fn applied_index(&self, id: NodeId) -> anyhow::Result<u64> {
        let client = self.client_for(&[id], Duration::from_secs(1));
        Ok(client
            .status_of(&self.client_addr(id), Duration::from_secs(1))
            .await?
            .applied_index)
    }

    /// The store revision node `id` reports (its header's): it holds every change up to it.
    pub async fn revision(&self, id: NodeId) -> anyhow::Result<u64> {
        let client = self.client_for(&[id], Duration::from_secs(1));
        let status = client.status_of(&self.client_addr(id), Duration::from_secs(1)).await?;
        Ok(status.header.map_or(0, |h| h.revision))
    }

    /// Every key-value node `id` holds, read locally (stale) and paged.
    pub async fn dump(&self, id: NodeId) -> anyhow::Result<Vec<KeyValue>> {
        let client = self.client_for(&[id], Duration::from_secs(5));
        let mut out = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = client
                .range(
                    RangeRequest {
                        start: start.clone(),
                        consistency: Consistency::Stale as i32,
                        ..Default::default()
                    },
                    None,
                )
                .await?;
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                start = last.key.clone();
                start.push(0);
            }
            out.extend(page.kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Waits until every node in `among` has applied what the leader has and holds exactly the
    /// leader's data; returns that data. Call it once writes have stopped. On timeout the error
    /// names the first key on which a node differs from the leader — replicas that diverge
    /// (rather than lag) never converge, and that is what it reports.
    pub async fn wait_converged(&self, among: &[NodeId], timeout: Duration) -> anyhow::Result<Vec<KeyValue>> {
        let leader = self.wait_for_leader(among, timeout).await?;
        let target = self.applied_index(leader).await?;
        for id in among {
            wait::until(timeout, &format!("node {id} to apply index {target}"), || async {
                (self.applied_index(*id).await.ok()? >= target).then_some(())
            })
            .await?;
        }
        let reference = self.dump(leader).await?;
        for id in among {
            // Having applied the same index, they should agree at once; a few seconds is slack.
            let settle = timeout.min(Duration::from_secs(5));
            let converged = wait::until(settle, "identical data", || async {
                (self.dump(*id).await.ok()? == reference).then_some(())
            })
            .await;
            if converged.is_err() {
                let theirs = self.dump(*id).await?;
                anyhow::bail!(
                    "node {id} holds different data from leader {leader} at index {target}: {}",
                    first_difference(&reference, &theirs)
                );
            }
        }
        Ok(reference)
    }

    /// Node `id`'s log so far.
    pub fn logs(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            // A paused node must be resumed to die promptly on some kernels; SIGKILL works anyway.
            self.kill(*id);
        }
        if std::thread::panicking() {
            for id in ids {
                eprintln!("----- raftkvd node {id} log -----\n{}", self.logs(id));
            }
            // For a post-mortem of a rare failure: keep the data dirs and full logs.
            if std::env::var_os("RAFTKV_KEEP_FAILED_DIRS").is_some() {
                if let Ok(placeholder) = TempDir::new() {
                    let kept = std::mem::replace(&mut self.dir, placeholder).keep();
                    eprintln!("----- data dirs and logs kept in {} -----", kept.display());
                }
            }
        }
    }
}

/// Where two dumps first differ, for a failure message.
fn first_difference(leader: &[KeyValue], other: &[KeyValue]) -> String {
    let show = |kv: Option<&KeyValue>| match kv {
        Some(kv) => format!(
            "{}={}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        ),
        None => "nothing".to_string(),
    };
    let at = leader
        .iter()
        .zip(other)
        .position(|(a, b)| a != b)
        .unwrap_or(leader.len().min(other.len()));
    format!(
        "leader has {} keys, it has {}; first difference: leader {} vs {}",
        leader.len(),
        other.len(),
        show(leader.get(at)),
        show(other.get(at))
    )
}

/// A dump as text: key to value, for comparing with what a test wrote.
pub fn as_text(kvs: Vec<KeyValue>) -> BTreeMap<String, String> {
    kvs.into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}
