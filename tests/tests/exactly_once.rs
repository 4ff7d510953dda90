//! Exactly-once writes end to end: a write retried with the same (client id, seq) is applied
//! once — on the node that takes it, after a leader change, and on a follower that got the
//! session table through a snapshot.

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use raftkv_client::pb::kv_client::KvClient;
use raftkv_client::pb::PutRequest;
use raftkv_proto::metadata;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;
use tonic::metadata::MetadataValue;

const T: Duration = Duration::from_secs(10);

/// Sends `put key=value` to the leader as write `seq` of client `client_id`; returns the
/// revision. A leader that steps down under a starved CI machine answers UNAVAILABLE: the same
/// numbered write is sent again to whoever leads next — which is exactly what this file checks
/// is safe.
async fn numbered_put(
    cluster: &InProcessCluster,
    client_id: u64,
    seq: u64,
    key: &str,
    value: &str,
) -> anyhow::Result<u64> {
    wait::until(T, "a numbered put to be acknowledged", || async {
        let leader = cluster.wait_for_leader(T).await.ok()?;
        match numbered_put_once(&cluster.client_addr(leader), client_id, seq, key, value).await {
            Ok(revision) => Some(Ok(revision)),
            Err(status) if status.code() == tonic::Code::Unavailable => None,
            Err(status) => Some(Err(anyhow::anyhow!("numbered put: {status}"))),
        }
    })
    .await?
}

async fn numbered_put_once(addr: &str, client_id: u64, seq: u64, key: &str, value: &str) -> Result<u64, tonic::Status> {
    let mut kv = KvClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
    });
    let md = request.metadata_mut();
    md.insert(metadata::CLIENT_ID, MetadataValue::from(client_id));
    md.insert(metadata::REQUEST_SEQ, MetadataValue::from(seq));
    md.insert(metadata::ACKED_BELOW, MetadataValue::from(seq));
    Ok(kv.put(request).await?.into_inner().revision)
}

/// The version of `key` on every running node, once they have all applied `index`.
async fn versions(cluster: &InProcessCluster, key: &[u8], revision: u64) -> anyhow::Result<Vec<u64>> {
    cluster.wait_revision(revision, T).await?;
    let mut out = Vec::new();
    for id in cluster.running() {
        let kv = cluster.node(id).store.reader().get(key)?;
        out.push(kv.map_or(0, |kv| kv.version));
    }
    Ok(out)
}

/// - A write and its retry (same client id and seq) on the leader: one application, and the
///   retry gets the first answer (same revision).
/// - After the leader is stopped, the same retry on the new leader: still one application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_applies_once_across_a_leader_change() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let first = numbered_put(&cluster, 4242, 1, "k", "v").await?;
    let again = numbered_put(&cluster, 4242, 1, "k", "v").await?;
    assert_eq!(again, first, "the retry gets the saved answer");
    assert_eq!(versions(&cluster, b"k", first).await?, vec![1, 1, 1]);

    tracing::info!(leader, "--- stop the leader, retry on the new one");
    cluster.stop(leader).await;
    cluster.wait_for_leader(T).await?;
    let after = numbered_put(&cluster, 4242, 1, "k", "v").await?;
    assert_eq!(after, first);
    let marker = cluster.client().put("marker", "x").await?;
    assert_eq!(versions(&cluster, b"k", marker.revision).await?, vec![1, 1]);

    // A new seq from the same client is a new write.
    numbered_put(&cluster, 4242, 2, "k", "v2").await?;
    let marker = cluster.client().put("marker", "y").await?;
    assert_eq!(versions(&cluster, b"k", marker.revision).await?, vec![2, 2]);
    cluster.shutdown().await;
    Ok(())
}

/// - A follower is down while the leader snapshots and purges; it comes back through a
///   snapshot. Then a retry of a write made before the snapshot is proposed: every node —
///   including the one whose session table came from the snapshot — recognizes it and applies
///   nothing, so all replicas keep version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restored_from_a_snapshot_still_recognizes_retries() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start_with(3, |c| {
        c.snapshot_every = 20;
        c.snapshot_keep_logs = 2;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let first = numbered_put(&cluster, 777, 1, "k", "v").await?;
    cluster.wait_revision(first, T).await?;

    cluster.stop(follower).await;
    let client = cluster.client();
    // Enough entries for a snapshot and a purge (the leader purges in batches of 256). One
    // write at a time, so that each is an entry of its own (concurrent writes share entries).
    for i in 0..320 {
        client.put(format!("filler-{i}"), "x").await?;
    }
    wait::until(T, "the leader to purge behind a snapshot", || async {
        let purged = cluster.node(leader).raft.metrics().borrow_watched().purged;
        purged.filter(|p| p.index > first + 5)
    })
    .await?;
    cluster.restart(follower).await?;
    let caught_up = client.put("caught-up", "x").await?;
    cluster.wait_revision(caught_up.revision, T).await?;
    let snapshot = cluster.node(follower).raft.metrics().borrow_watched().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index > first),
        "the follower was restored from a snapshot"
    );

    let retry = numbered_put(&cluster, 777, 1, "k", "v").await?;
    assert_eq!(retry, first);
    let marker = client.put("marker", "x").await?;
    assert_eq!(versions(&cluster, b"k", marker.revision).await?, vec![1, 1, 1]);
    cluster.shutdown().await;
    Ok(())
}
