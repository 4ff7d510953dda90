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

/// A free TCP port on 127.0.0.1 for a server a test starts as a separate process.
///
/// A port found by binding port 0 and letting go is not reserved: the kernel may hand the same
/// port to the next such probe, or to an outgoing connection, before the server binds it (a
/// CI run once started two nodes of one cluster on the same port). So ports come from
/// [`PortAllocator`]: below the kernel's ephemeral range (outgoing connections never take
/// them), from a block of its own for each test nextest runs at the same time, and never twice
/// in one test process.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` consecutive free ports (see [`free_port`]).
pub fn free_ports(n: u16) -> Vec<u16> {
    static ALLOCATOR: std::sync::Mutex<Option<PortAllocator>> = std::sync::Mutex::new(None);
    let mut guard = ALLOCATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let allocator = guard.get_or_insert_with(PortAllocator::for_this_test);
    allocator
        .take(n, |port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free block of loopback ports for this test (are other servers using 15000-32767?)")
}

/// Hands out loopback ports from one test's block of [`PortAllocator::BLOCK`] ports in
/// `FIRST..LAST`, each at most once.
///
/// The block is picked by nextest's `NEXTEST_TEST_GLOBAL_SLOT` (unique among the tests running
/// at once), or by the process id when run some other way; the starting point inside the block
/// moves with the process id, so a test that follows another in the same slot does not reuse
/// ports the earlier one may still have in TIME_WAIT.
#[derive(Debug)]
pub struct PortAllocator {
    block_start: u16,
    next: u16,
}

impl PortAllocator {
    /// First port handed out (well clear of well-known and registered service ports in use
    /// on developer machines).
    pub const FIRST: u16 = 15_000;
    /// One past the last: the start of Linux's default ephemeral range.
    pub const LAST: u16 = 32_768;
    /// Ports per test.
    pub const BLOCK: u16 = 256;

    /// The allocator for this test process.
    pub fn for_this_test() -> Self {
        let pid = std::process::id();
        let slot = std::env::var("NEXTEST_TEST_GLOBAL_SLOT")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(pid);
        Self::new(slot, pid)
    }

    /// The allocator for test slot `slot`, starting at an offset derived from `seed`.
    pub fn new(slot: u32, seed: u32) -> Self {
        let blocks = u32::from((Self::LAST - Self::FIRST) / Self::BLOCK);
        let block_start = Self::FIRST + (slot % blocks) as u16 * Self::BLOCK;
        Self {
            block_start,
            next: (seed.wrapping_mul(2_654_435_761) % u32::from(Self::BLOCK)) as u16,
        }
    }

    /// The next `n` consecutive ports for which `is_free` holds, or `None` once the block has
    /// been walked once without finding them.
    pub fn take(&mut self, n: u16, is_free: impl Fn(u16) -> bool) -> Option<Vec<u16>> {
        for _ in 0..Self::BLOCK {
            let offset = self.next;
            self.next = (self.next + 1) % Self::BLOCK;
            if offset + n > Self::BLOCK {
                continue;
            }
            let ports: Vec<u16> = (0..n).map(|i| self.block_start + offset + i).collect();
            if ports.iter().all(|p| is_free(*p)) {
                self.next = (offset + n) % Self::BLOCK;
                return Some(ports);
            }
        }
        None
    }
}

/// Puts `key` = `value` until the cluster acknowledges it: a put that came back indeterminate or
/// unavailable is sent again with the same value (harmless if the first one had applied), the
/// way the crash tests' writers make their set of acknowledged writes exact. Any other error is
/// returned.
pub async fn put_until_acknowledged(client: &raftkv_client::Client, key: &str, value: &str) -> anyhow::Result<()> {
    loop {
        match client.put(key, value).await {
            Ok(_) => return Ok(()),
            Err(raftkv_client::ClientError::Indeterminate(_) | raftkv_client::ClientError::Unavailable(_)) => {}
            Err(e) => return Err(anyhow::anyhow!("writing {key}: {e}")),
        }
    }
}

#[cfg(test)]
mod port_allocator_tests {
    use super::PortAllocator;
    use std::collections::HashSet;

    #[test]
    fn a_test_never_gets_the_same_port_twice_and_stays_in_its_block() {
        let mut ports = PortAllocator::new(3, 12_345);
        let mut seen = HashSet::new();
        for _ in 0..PortAllocator::BLOCK {
            let port = ports.take(1, |_| true).expect("a port")[0];
            assert!(seen.insert(port), "port {port} handed out twice");
            let start = PortAllocator::FIRST + 3 * PortAllocator::BLOCK;
            assert!((start..start + PortAllocator::BLOCK).contains(&port));
            assert!(port < PortAllocator::LAST, "{port} is in the ephemeral range");
        }
    }

    #[test]
    fn concurrent_tests_get_disjoint_blocks() {
        let a = PortAllocator::new(0, 1).take(1, |_| true).expect("a port")[0];
        let b = PortAllocator::new(1, 1).take(1, |_| true).expect("a port")[0];
        assert!(a.abs_diff(b) >= PortAllocator::BLOCK - 1, "{a} and {b} share a block");
    }

    #[test]
    fn taken_ports_are_skipped_and_runs_are_consecutive() {
        let mut ports = PortAllocator::new(0, 0);
        let first = ports.take(3, |p| p % 5 != 0).expect("three ports");
        assert_eq!(first.len(), 3);
        assert!(first.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(first.iter().all(|p| p % 5 != 0));
        assert_eq!(
            ports.take(1, |_| false),
            None,
            "a full block is reported, not looped on"
        );
    }
}
