//! `Script`: a cluster driven through `scripts/cluster.sh`, as a user would, for the tests of
//! the script itself and of the tools that call it (`raftkv bench failover`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::workspace_binary;

/// A cluster run by `scripts/cluster.sh` with the debug binaries, on free ports of its own and
/// a temp cluster dir; `down` when dropped.
pub struct Script {
    dir: tempfile::TempDir,
    client_base: u16,
    peer_base: u16,
    metrics_base: u16,
    /// Where the nodes serve etcd's v3 API (node N on base + N).
    etcd_base: u16,
    bin_dir: PathBuf,
}

impl Script {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let bin_dir = workspace_binary("raftkvd").parent().expect("bin dir").to_path_buf();
        let [client_base, peer_base, metrics_base, etcd_base] = free_port_bases();
        Self {
            etcd_base,
            dir: tempfile::tempdir().expect("temp dir"),
            client_base,
            peer_base,
            metrics_base,
            bin_dir,
        }
    }

    /// The top of the checkout (where `scripts/` is).
    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The environment that points `scripts/cluster.sh` (or a `raftkv bench` that runs it) at
    /// this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RAFTKV_BIN_DIR", self.bin_dir.display().to_string()),
            ("RAFTKV_CLUSTER_DIR", self.dir.path().display().to_string()),
            ("RAFTKV_CLIENT_PORT_BASE", self.client_base.to_string()),
            ("RAFTKV_PEER_PORT_BASE", self.peer_base.to_string()),
            ("RAFTKV_METRICS_PORT_BASE", self.metrics_base.to_string()),
            ("RAFTKV_ETCD_PORT_BASE", self.etcd_base.to_string()),
        ]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client_base(&self) -> u16 {
        self.client_base
    }

    /// Runs `scripts/cluster.sh ARGS` for this cluster.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(Self::root().join("scripts/cluster.sh"))
            .args(args)
            .envs(self.env())
            .output()
            .expect("run cluster.sh")
    }

    pub fn endpoints(&self) -> String {
        (1..=3)
            .map(|i| format!("127.0.0.1:{}", self.client_base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The current leader's id, as `raftkv cluster leader` prints it.
    pub fn leader(&self) -> String {
        let out = String::from_utf8(self.raftkv(&["cluster", "leader"]).stdout).unwrap();
        out.split_whitespace().next().expect("a leader id").to_string()
    }

    pub fn raftkv(&self, args: &[&str]) -> Output {
        self.raftkv_with(&[], args)
    }

    /// `raftkv ARGS` against this cluster with `env` added (e.g. the TLS certificate paths).
    pub fn raftkv_with(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        Command::new(workspace_binary("raftkv"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .arg("--endpoints")
            .arg(self.endpoints())
            .args(args)
            .output()
            .expect("run raftkv")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// Three blocks of free ports (client, peer, metrics): `scripts/cluster.sh` gives node `i` the
/// port `base + i`, and the tests grow the cluster to at most five nodes.
fn free_port_bases() -> [u16; 4] {
    let block = || crate::free_ports(5)[0] - 1;
    [block(), block(), block(), block()]
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
