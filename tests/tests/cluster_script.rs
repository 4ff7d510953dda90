//! `scripts/cluster.sh`, the README's first command, driven end to end with the debug binaries
//! (RAFTKV_BIN_DIR) on ports of its own and a temp cluster dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use raftkv_tests::workspace_binary;

struct Script {
    dir: tempfile::TempDir,
    client_base: u16,
    peer_base: u16,
    metrics_base: u16,
    bin_dir: PathBuf,
}

impl Script {
    fn new() -> Self {
        let bin_dir = workspace_binary("raftkvd").parent().expect("bin dir").to_path_buf();
        let [client_base, peer_base, metrics_base] = free_port_bases();
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            client_base,
            peer_base,
            metrics_base,
            bin_dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Command::new(root.join("scripts/cluster.sh"))
            .args(args)
            .env("RAFTKV_BIN_DIR", &self.bin_dir)
            .env("RAFTKV_CLUSTER_DIR", self.dir.path())
            .env("RAFTKV_CLIENT_PORT_BASE", self.client_base.to_string())
            .env("RAFTKV_PEER_PORT_BASE", self.peer_base.to_string())
            .env("RAFTKV_METRICS_PORT_BASE", self.metrics_base.to_string())
            .output()
            .expect("run cluster.sh")
    }

    fn endpoints(&self) -> String {
        (1..=3)
            .map(|i| format!("127.0.0.1:{}", self.client_base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The current leader's id, as `raftkv cluster leader` prints it.
    fn leader(&self) -> String {
        let out = String::from_utf8(self.raftkv(&["cluster", "leader"]).stdout).unwrap();
        out.split_whitespace().next().expect("a leader id").to_string()
    }

    fn raftkv(&self, args: &[&str]) -> Output {
        Command::new(workspace_binary("raftkv"))
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

/// Three blocks of three free ports (client, peer, metrics), outside the ephemeral range.
fn free_port_bases() -> [u16; 3] {
    let free_block = |base: u16| (1..=3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
    let seed = std::process::id() as u16;
    let mut bases = (0..400u16)
        .map(|k| 20_000 + (seed.wrapping_mul(37).wrapping_add(k * 23)) % 10_000)
        .filter(|b| free_block(*b));
    let client = bases.next().expect("a free client port block");
    let peer = bases.find(|b| b.abs_diff(client) > 3).expect("a free peer port block");
    let metrics = bases
        .find(|b| b.abs_diff(client) > 3 && b.abs_diff(peer) > 3)
        .expect("a free metrics port block");
    [client, peer, metrics]
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cluster_script_up_kill_start_pause_down_clean() {
    let s = Script::new();

    // A taken port is refused with a message naming it.
    {
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", s.client_base + 2)).expect("bind");
        let up = s.run(&["up"]);
        assert!(!up.status.success(), "{}", text(&up));
        assert!(text(&up).contains("is already in use"), "{}", text(&up));
        s.run(&["down"]);
    }

    let up = s.run(&["up"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("voters up 3/3 (quorum 2)"), "{}", text(&up));
    let again = s.run(&["up"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    assert!(s.raftkv(&["put", "k", "v"]).status.success());
    let leader = s.leader();

    let kill = s.run(&["kill", &leader]);
    assert!(kill.status.success(), "{}", text(&kill));
    let put = s.raftkv(&["put", "after-kill", "v"]);
    assert!(put.status.success(), "write after the leader's death: {}", text(&put));

    assert!(s.run(&["start", &leader]).status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = s.raftkv(&["cluster", "status"]);
        if text(&status).contains("voters up 3/3") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {leader} did not rejoin: {}",
            text(&status)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Pause a follower (leadership may have moved while the old leader was away).
    let current = s.leader();
    let follower = if current == "1" { "2" } else { "1" };
    assert!(s.run(&["pause", follower]).status.success());
    assert!(s.raftkv(&["put", "while-paused", "v"]).status.success());
    assert!(s.run(&["resume", follower]).status.success());

    // `raftkv bench failover` drives this same script to kill and restart leaders.
    let bench = Command::new(workspace_binary("raftkv"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["--endpoints", &s.endpoints(), "-o", "json", "bench", "failover"])
        .args(["--kills", "2", "--clients", "4", "--warmup", "300ms", "--settle", "1s"])
        .env("RAFTKV_BIN_DIR", &s.bin_dir)
        .env("RAFTKV_CLUSTER_DIR", s.dir.path())
        .env("RAFTKV_CLIENT_PORT_BASE", s.client_base.to_string())
        .env("RAFTKV_PEER_PORT_BASE", s.peer_base.to_string())
        .env("RAFTKV_METRICS_PORT_BASE", s.metrics_base.to_string())
        .output()
        .expect("run raftkv bench failover");
    assert!(bench.status.success(), "{}", text(&bench));
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json report");
    assert_eq!(report["kills"], 2, "{report}");
    assert_eq!(report["windows_ms"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["acknowledged_lost"], 0, "{report}");
    assert!(report["writes_acknowledged"].as_u64().unwrap_or(0) > 0);
    assert_eq!(report["errors_other"], serde_json::json!({}), "{report}");

    // Grow by one node, then shrink by another.
    let add = s.run(&["add"]);
    assert!(add.status.success(), "{}", text(&add));
    assert!(text(&add).contains("voters up 4/4"), "{}", text(&add));
    let victim = if s.leader() == "2" { "3" } else { "2" };
    let remove = s.run(&["remove", victim]);
    assert!(remove.status.success(), "{}", text(&remove));
    let status = s.raftkv(&["cluster", "status"]);
    assert!(text(&status).contains("voters up 3/3"), "{}", text(&status));
    assert!(
        !s.run(&["start", victim]).status.success(),
        "a removed node is not a node any more"
    );

    let logs = s.run(&["logs", "1"]);
    assert!(text(&logs).contains("node started"), "{}", text(&logs));
    assert!(!s.run(&["kill", "9"]).status.success(), "unknown node refused");

    let down = s.run(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&down).contains("node 4 stopped"), "{}", text(&down));
    let status = s.raftkv(&["--timeout", "300ms", "cluster", "status"]);
    assert_eq!(status.status.code(), Some(3), "nothing answers after down");

    assert!(s.run(&["clean"]).status.success());
    assert!(!s.dir.path().join("node1").exists());
}
