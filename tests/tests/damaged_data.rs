//! A node whose stored data was damaged after it was written refuses to start, and says which
//! item in which file is damaged and what to do; with the damage undone it starts and catches up.

use openraft::async_runtime::WatchReceiver;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(10);

fn flip_file_byte_at(path: &Path, at: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes)?;
    Ok(())
}

fn flip_file_byte(path: &Path) -> anyhow::Result<()> {
    let last = std::fs::metadata(path)?.len() as usize - 1;
    flip_file_byte_at(path, last)
}

/// The newest write-ahead log segment in `wal_dir`, and the offset of the first byte of its
/// last record's payload.
fn last_record(wal_dir: &Path) -> anyhow::Result<(std::path::PathBuf, usize)> {
    let mut segments: Vec<_> = std::fs::read_dir(wal_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let path = segments.pop().context("a log segment")?;
    let bytes = std::fs::read(&path)?;
    // Records follow the 16-byte header: len u32 LE, then 13 - 4 more header bytes, the payload
    // and one trailer byte; the first all-zero header ends them.
    let (mut at, mut last) = (16, None);
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        if bytes[at..(at + 13).min(bytes.len())].iter().all(|b| *b == 0) {
            break;
        }
        last = Some(at);
        at += len + 14;
    }
    Ok((path, last.context("a log record")? + 13))
}

/// - A follower with a snapshot and a log is stopped, and one bit of its last log record is
///   flipped: it refuses to start, naming the file, the record's offset and the way out.
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
    cluster.wait_revision(last, T).await?;
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

    // A flipped bit in the last, complete log record: damage, not a write cut short.
    let (segment, payload_at) = last_record(&dir.join("wal"))?;
    flip_file_byte_at(&segment, payload_at)?;
    let err = cluster.restart(victim).await.unwrap_err().to_string();
    let file = segment.display().to_string();
    let offset = format!("record at offset {}", payload_at - 13);
    for needle in [
        file.as_str(),
        offset.as_str(),
        "checksum mismatch",
        "is damaged",
        "Replacing a node",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    flip_file_byte_at(&segment, payload_at)?;

    let snapshot = dir.join("snapshot").join("current.snap");
    flip_file_byte(&snapshot)?;
    let err = cluster.restart(victim).await.unwrap_err().to_string();
    assert!(err.contains(&snapshot.display().to_string()), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    flip_file_byte(&snapshot)?;

    let missed = client.put("while-down", "v").await?.revision;
    cluster.restart(victim).await?;
    cluster.wait_revision(missed, T).await?;
    cluster.shutdown().await;
    Ok(())
}
