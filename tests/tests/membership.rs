//! Growing, shrinking and compacting a cluster: a node added behind a snapshot, a node removed,
//! a bounded log under steady overwrites — on an in-process cluster.

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_client::pb::Consistency;
use raftkv_client::{Client, ClientConfig, ClientError};
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(20);

/// Writes continuously until stopped; counts acknowledgements and fails on any error but an
/// indeterminate one (which exactly-once retries make rare).
fn steady_writer(client: Client, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            match client.put(format!("steady/{i:06}"), "x").await {
                Ok(_) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(ClientError::Indeterminate(_)) => {}
                Err(e) => panic!("a write failed during a membership change: {e}"),
            }
        }
    })
}

/// - A cluster whose leader has snapshotted and purged its log gets a fourth node: it can only
///   catch up by snapshot, then serves identical data, and is promoted to voter.
/// - A follower is then removed: it stops serving and says so, its id is refused forever.
/// - Writes go on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_node_behind_a_snapshot_then_remove_another_while_writes_continue() -> anyhow::Result<()> {
    let tune = |c: &mut raftkv_node::NodeConfig| {
        c.snapshot_every = 50;
        c.snapshot_keep_logs = 5;
    };
    let mut cluster = InProcessCluster::start_with(3, tune).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    for i in 0..400 {
        client.put(format!("data/{i:04}"), vec![b'v'; 512]).await?;
    }
    wait::until(T, "the leader to purge its log", || async {
        let purged = cluster.node(leader).raft.metrics().borrow_watched().purged;
        purged.filter(|p| p.index > 100)
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = steady_writer(client.clone(), stop.clone(), acked.clone());

    tracing::info!("--- add node 4");
    let addr = cluster.start_pristine(4, tune).await?;
    let members = client
        .add_member(4, &addr.client_addr, &addr.peer_addr, false, None)
        .await?;
    let four = members.members.iter().find(|m| m.id == 4).expect("node 4 listed");
    assert!(four.voter, "node 4 was promoted");
    let snapshot = cluster.node(4).raft.metrics().borrow_watched().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index > 100),
        "node 4 caught up by snapshot: {snapshot:?}"
    );

    tracing::info!("--- remove a follower");
    let leader = cluster.wait_for_leader(T).await?;
    let gone = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .expect("a follower");
    let members = client.remove_member(gone).await?;
    assert!(members.members.iter().all(|m| m.id != gone));
    assert_eq!(members.removed_ids, vec![gone]);
    let before = acked.load(Ordering::Relaxed);
    wait::until(T, "writes to continue after the removal", || async {
        (acked.load(Ordering::Relaxed) > before + 20).then_some(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;

    // The removed node says so, and its id is refused.
    wait::until(T, "the removed node to know it", || async {
        cluster.node(gone).removal_is_marked().then_some(())
    })
    .await?;
    let removed_client = Client::new(ClientConfig::new([cluster.client_addr(gone)]))?;
    let err = removed_client
        .get_with("data/0001", Consistency::Stale, Some(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("removed from the cluster"), "{err}");
    let refused = client
        .add_member(gone, &cluster.client_addr(gone), "127.0.0.1:1", false, None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("never reused"), "{refused}");

    // Node 4 holds exactly what the leader holds.
    let leader = cluster.wait_for_leader(T).await?;
    let marker = client.put("marker", "x").await?;
    for id in [leader, 4] {
        wait::until(T, &format!("node {id} to hold the marker"), || async {
            (cluster.revision(id) >= marker.revision).then_some(())
        })
        .await?;
    }
    assert_eq!(cluster.dump(4)?, cluster.dump(leader)?);
    cluster.shutdown().await;
    Ok(())
}

/// - Overwriting a few keys for many entries keeps the log short: snapshots are taken and the
///   log is purged behind them on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_overwrites_keep_the_log_bounded() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start_with(3, |c| {
        c.snapshot_every = 100;
        c.snapshot_keep_logs = 10;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    // Concurrent puts are batched into shared log entries, so the writers go on until the log
    // (not the number of puts) is long enough: past ten snapshot intervals.
    const LOG_TARGET: u64 = 1_000;
    let long_enough = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (client, long_enough) = (client.clone(), long_enough.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20_000u64 {
                if long_enough.load(Ordering::SeqCst) {
                    break;
                }
                client.put(format!("hot/{}", (t + i) % 5), format!("{i}")).await?;
            }
            Ok::<_, ClientError>(())
        }));
    }
    wait::until(Duration::from_secs(60), "the log to reach its target", || async {
        (cluster.applied_index(leader) >= LOG_TARGET).then_some(())
    })
    .await?;
    long_enough.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    let last = client.put("hot/0", "final").await?;
    cluster.wait_revision(last.revision, T).await?;
    for id in cluster.running() {
        let node = cluster.node(id);
        wait::until(T, &format!("node {id} to purge"), || async {
            let purged = node.raft.metrics().borrow_watched().purged;
            purged.filter(|p| p.index > 600)
        })
        .await?;
        let entries = node.store.log_entry_count();
        // At most: the entries since the last snapshot, the kept tail, one purge batch (256).
        assert!(entries <= 100 + 10 + 256 + 50, "node {id} holds {entries} log entries");
    }
    cluster.shutdown().await;
    Ok(())
}
