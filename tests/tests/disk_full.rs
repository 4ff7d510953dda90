//! A node whose disk fills up refuses writes cleanly, keeps serving reads, shows the alarm,
//! and takes writes again by itself when space is freed; nothing acknowledged is lost.
//!
//! Needs a small filesystem of its own: the test mounts a 96 MiB tmpfs when it runs as root
//! and may mount, and is skipped with the reason printed otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use raftkv_client::ClientError;
use raftkv_node::disk_guard::DiskGuard;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;
use tonic::Code;

const T: Duration = Duration::from_secs(10);
const MB: u64 = 1024 * 1024;

/// A tmpfs mounted on a temp dir for the test's life.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size_mb: u64) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, cannot mount a small filesystem".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m"),
                "raftkv-disk-full-test",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// - Three nodes keep their data on one 96 MiB filesystem, with `--min-free-mb 24`.
/// - A ballast file leaves 16 MiB free: writes are refused with RESOURCE_EXHAUSTED naming the
///   cause, Status shows the alarm, linearizable reads still work.
/// - The ballast is deleted: writes are taken again without a restart, and every write
///   acknowledged before, during and after is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() -> anyhow::Result<()> {
    let fs = match SmallFs::mount(96) {
        Ok(fs) => fs,
        Err(reason) => {
            eprintln!("skipped a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself: {reason}");
            return Ok(());
        }
    };
    let root: PathBuf = fs.path().to_path_buf();
    let cluster = InProcessCluster::start_with(3, |c| {
        c.data_dir = root.join(format!("node{}", c.id));
        c.min_free_mb = 24;
        c.cache_mb = 8;
        // Three nodes' preallocated log segments must leave room on 96 MiB.
        c.wal_segment_mb = 2;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        client.put(format!("k{i:02}"), format!("v{i}")).await?;
        acked.insert(format!("k{i:02}"), format!("v{i}"));
    }

    let free = DiskGuard::new(root.clone(), 0).check()?;
    let ballast = root.join("ballast");
    std::fs::write(&ballast, vec![0u8; (free - 16 * MB) as usize])?;
    let refusal = wait::until(T, "writes to be refused for lack of space", || async {
        match client.put("during", "x").await {
            Err(ClientError::Server {
                code: Code::ResourceExhausted,
                message,
            }) => Some(message),
            _ => None,
        }
    })
    .await?;
    assert!(refusal.contains("disk is nearly full"), "{refusal}");
    assert!(refusal.contains("--min-free-mb 24"), "{refusal}");
    let status = client.status_of(&cluster.client_addr(leader), T).await?;
    assert!(status.disk_space_alarm, "{status:?}");
    assert_eq!(client.get("k00").await?.kv.map(|kv| kv.value), Some(b"v0".to_vec()));

    std::fs::remove_file(&ballast)?;
    wait::until(T, "writes to be taken again", || async {
        client.put("after", "y").await.ok()
    })
    .await?;
    acked.insert("after".into(), "y".into());
    for (k, v) in &acked {
        let got = client.get(k.as_str()).await?.kv.map(|kv| kv.value);
        assert_eq!(got, Some(v.as_bytes().to_vec()), "{k}");
    }
    assert!(
        !client
            .status_of(&cluster.client_addr(leader), T)
            .await?
            .disk_space_alarm
    );
    cluster.shutdown().await;
    Ok(())
}
