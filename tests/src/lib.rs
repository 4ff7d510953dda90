//! raftkv-tests: cluster harnesses for raftkv's end-to-end tests.
//!
//! - [`in_process`]: several nodes in the test process, on real loopback gRPC, with links that
//!   can be cut ([`raftkv_node::network::LinkFaults`]);
//! - [`process`]: real `raftkvd` processes that can be SIGKILLed, paused and restarted;
//! - [`wait`]: waiting on a condition with a deadline (never a bare sleep);
//! - [`linearizability`]: a checker for histories of reads, writes and compare-and-swaps;
//! - [`chaos`]: the chaos run (history under faults, then the checker), binary `raftkv-chaos`.
//!
//! Everything binds 127.0.0.1 only, lives in temp dirs, and is torn down on drop.

pub mod chaos;
pub mod in_process;
pub mod linearizability;
pub mod process;
pub mod prometheus;
pub mod script;
pub mod wait;

use std::path::PathBuf;

/// Raft timings the harnesses give their nodes: 50 ms heartbeats and 150–300 ms election
/// timeouts, where the product defaults are 30 and 70–100 ms. A CI machine runs several
/// clusters at once on two cores in debug builds; with the tighter defaults a starved follower
/// calls spurious elections and a test about something else fails. Failover speed is measured
/// by benchmarks (`raftkv bench failover`), never by tests.
pub const HARNESS_TIMING_FLAGS: [&str; 6] = [
    "--heartbeat-ms",
    "50",
    "--election-min-ms",
    "150",
    "--election-max-ms",
    "300",
];

/// [`HARNESS_TIMING_FLAGS`] applied to an in-process node's configuration.
pub fn harness_timings(config: &mut raftkv_node::NodeConfig) {
    config.heartbeat_ms = 50;
    config.election_min_ms = 150;
    config.election_max_ms = 300;
}

/// Installs a test-friendly tracing subscriber once (output captured by the test runner).
/// `RUST_LOG` picks the level; the default is `warn`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,openraft=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Path of a binary built by this workspace (`raftkvd`, `raftkv`), next to the running test's
/// own target directory. `RAFTKVD_BIN` / `RAFTKV_BIN` override it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build the workspace binaries first (`cargo build --workspace --bins`, which \
         scripts/test.sh does), or set {var}",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
