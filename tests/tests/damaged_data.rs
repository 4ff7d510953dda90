//! A node whose stored data was damaged after it was written refuses to start, and says which
//! item in which file is damaged and what to do; with the damage undone it starts and catches up.

use openraft::async_runtime::WatchReceiver;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(10);

/// Flips the lowest bit of the last byte of the value under `key` in sled tree `tree`.
fn flip_stored_byte(db_dir: &Path, tree: &str, key: &[u8]) -> anyhow::Result<()> {
    let db = sled::open(db_dir)?;
    let tree = db.open_tree(tree)?;
    let mut value = tree.get(key)?.context("the stored value")?.to_vec();
    let last = value.len() - 1;
    value[last] ^= 0x01;
    tree.insert(key, value)?;
    db.flush()?;
    Ok(())
}

fn flip_file_byte(path: &Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// - A follower with a snapshot and a log is stopped, and one bit of its last log entry is
///   flipped: it refuses to start, naming the entry, the file and the way out.
/// - The same for one bit of its snapshot file.
/// - Undamaged again, it starts and catches up with the writes it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_entry_or_snapshot_stops_the_node_at_start() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start_with(3, |c| {
        c.snapshot_every = 20;
        c.snapshot_keep_logs = 50;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let victim = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    let client = cluster.client();
    let mut last = 0;
    for i in 0..40 {
        last = client.put(format!("k{i:02}"), "v").await?.revision;
    }
    cluster.wait_applied(last, T).await?;
    wait::until(T, "the follower to snapshot", || async {
        cluster
            .node(victim)
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .is_some()
            .then_some(())
    })
    .await?;
    let dir = cluster.data_dir(victim);
    cluster.stop(victim).await;

    // The database is closed again at the end of the statement (sled locks it while open).
    let last_key = sled::open(dir.join("db"))?
        .open_tree("raft_log")?
        .last()?
        .context("a log entry")?
        .0
        .to_vec();
    let index = u64::from_be_bytes(last_key.as_slice().try_into()?);
    flip_stored_byte(&dir.join("db"), "raft_log", &last_key)?;
    let err = cluster.restart(victim).await.unwrap_err().to_string();
    let entry = format!("Raft log entry {index} in {}", dir.join("db").display());
    for needle in [entry.as_str(), "checksum mismatch", "is damaged", "Replacing a node"] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    flip_stored_byte(&dir.join("db"), "raft_log", &last_key)?;

    let snapshot = dir.join("snapshot").join("current.snap");
    flip_file_byte(&snapshot)?;
    let err = cluster.restart(victim).await.unwrap_err().to_string();
    assert!(err.contains(&snapshot.display().to_string()), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    flip_file_byte(&snapshot)?;

    let missed = client.put("while-down", "v").await?.revision;
    cluster.restart(victim).await?;
    cluster.wait_applied(missed, T).await?;
    cluster.shutdown().await;
    Ok(())
}
