//! Three nodes in one process over loopback gRPC: election, replication, leader hints,
//! failover after a leader shutdown, restart from the data dir, and refusal of bad input.

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use raftkv_client::pb::kv_client::KvClient;
use raftkv_client::pb::{Consistency, DeleteRequest, GetRequest, PutRequest, RangeRequest};
use raftkv_proto::{error_kind, metadata};
use raftkv_tests::in_process::InProcessCluster;
use tonic::Code;

const T: Duration = Duration::from_secs(10);

async fn raw_kv(addr: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{addr}")).await.expect("connect")
}

/// - A new cluster elects one leader that every node agrees on.
/// - Writes through the client are applied on every node, with increasing revisions
///   and per-key versions counting the changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_and_replication() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    tracing::info!(leader, "--- leader elected");

    let client = cluster.client();
    let mut last_revision = 0;
    for i in 0..50 {
        let r = client.put(format!("key-{i:03}"), format!("value-{i}")).await?;
        assert!(r.revision > last_revision, "revisions increase");
        last_revision = r.revision;
    }
    let r = client.put("key-000", "changed").await?;
    cluster.wait_revision(r.revision, T).await?;

    let reference = cluster.dump(leader)?;
    assert_eq!(reference.len(), 50);
    for id in cluster.running() {
        assert_eq!(
            cluster.dump(id)?,
            reference,
            "node {id} holds the same data as the leader"
        );
    }
    let changed = reference.iter().find(|kv| kv.key == b"key-000").expect("key-000");
    assert_eq!(changed.value, b"changed");
    assert_eq!(changed.version, 2);
    assert_eq!(changed.mod_revision, r.revision);
    assert!(changed.create_revision < changed.mod_revision);

    cluster.shutdown().await;
    Ok(())
}

/// - A write sent to a follower is refused with UNAVAILABLE naming the leader in metadata.
/// - The client library follows the hint transparently.
/// - A stale read is served by the follower itself, with a header saying how fresh it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_answers_with_the_leader_hint() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.a_follower(leader)?;
    let mut kv = raw_kv(&cluster.client_addr(follower)).await;

    let err = kv
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
            lease: 0,
        })
        .await
        .expect_err("a follower must not accept a write");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.metadata().get(metadata::ERROR_KIND).unwrap(),
        error_kind::NOT_LEADER
    );
    assert_eq!(
        err.metadata().get(metadata::LEADER_ID).unwrap(),
        leader.to_string().as_str()
    );
    assert_eq!(
        err.metadata().get(metadata::LEADER_ADDR).unwrap(),
        cluster.client_addr(leader).as_str()
    );

    tracing::info!("--- the client follows the hint");
    let client = raftkv_client::Client::new(raftkv_client::ClientConfig::new([cluster.client_addr(follower)]))?;
    let put = client.put("k", "v").await?;
    assert_eq!(client.known_leader(), Some(cluster.client_addr(leader)));
    cluster.wait_revision(put.revision, T).await?;

    let stale = kv
        .get(GetRequest {
            key: b"k".to_vec(),
            consistency: Consistency::Stale as i32,
        })
        .await?
        .into_inner();
    assert_eq!(stale.kv.expect("replicated").value, b"v");
    let header = stale.header.expect("header");
    assert_eq!(header.node_id, follower);
    assert_eq!(header.leader_id, leader);
    assert!(header.revision >= put.revision);

    cluster.shutdown().await;
    Ok(())
}

/// - When the leader shuts down, the two others elect a new leader among themselves.
/// - Writes continue through the client, and nothing acknowledged before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shutdown_elects_a_new_leader_and_writes_continue() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start(3).await?;
    let old_leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    for i in 0..20 {
        client.put(format!("before-{i}"), "x").await?;
    }

    tracing::info!(old_leader, "--- stopping the leader");
    cluster.stop(old_leader).await;
    let new_leader = cluster.wait_for_leader(T).await?;
    assert_ne!(new_leader, old_leader);

    for i in 0..20 {
        client.put(format!("after-{i}"), "y").await?;
    }
    let r = client.get("before-7").await?;
    assert_eq!(r.kv.expect("acknowledged before the failover").value, b"x");
    let all = client
        .range(
            RangeRequest {
                start: Vec::new(),
                ..Default::default()
            },
            None,
        )
        .await?;
    assert_eq!(all.count, 40);

    cluster.shutdown().await;
    Ok(())
}

/// - A follower stopped while writes continue comes back from its data dir with everything it
///   had, catches up with what it missed, and holds the same data as the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_from_its_data_dir() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let client = cluster.client();
    for i in 0..30 {
        client.put(format!("a-{i}"), "1").await?;
    }
    let before = client.put("marker", "1").await?;
    cluster.wait_revision(before.revision, T).await?;

    tracing::info!(follower, "--- stopping a follower");
    cluster.stop(follower).await;
    for i in 0..30 {
        client.put(format!("b-{i}"), "2").await?;
    }
    let last = client.delete("a-0").await?;
    assert_eq!(last.deleted, 1);

    tracing::info!(follower, "--- restarting it");
    cluster.restart(follower).await?;
    // Right after the restart, before any catch-up, what it had applied is there.
    assert!(cluster.revision(follower) >= before.revision);
    cluster.wait_revision(last.revision, T).await?;
    let leader = cluster.wait_for_leader(T).await?;
    assert_eq!(cluster.dump(follower)?, cluster.dump(leader)?);
    assert_eq!(cluster.dump(follower)?.len(), 60);

    cluster.shutdown().await;
    Ok(())
}

/// - With a low snapshot threshold, the leader snapshots and purges its log while a follower is
///   down; the follower comes back behind the purge point, so it can only catch up by receiving
///   the snapshot — over the peer transport, in 1 MiB chunks (the data is ~2.4 MiB) — after
///   which it holds exactly the leader's data, and keeps following new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start_with(3, |c| {
        c.snapshot_every = 40;
        c.snapshot_keep_logs = 5;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let client = cluster.client();
    client.put("early", "1").await?;

    tracing::info!(follower, "--- stop a follower, then write past several snapshots");
    cluster.stop(follower).await;
    let value = vec![b'v'; 8 * 1024];
    for i in 0..300 {
        client.put(format!("bulk-{i:04}"), value.clone()).await?;
    }
    let last = client.put("last", "1").await?;
    let leader = cluster.wait_for_leader(T).await?;
    let purged = cluster.wait_purged(leader, T).await?;

    tracing::info!(follower, "--- restart it: only a snapshot can bring it up to date");
    cluster.restart(follower).await?;
    cluster.wait_revision(last.revision, T).await?;
    let snapshot = cluster.node(follower).raft.metrics().borrow_watched().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index >= purged),
        "follower installed a snapshot covering the purged log: {snapshot:?} vs purged {purged}"
    );
    assert_eq!(cluster.dump(follower)?, cluster.dump(leader)?);
    assert_eq!(cluster.dump(follower)?.len(), 302);

    let after = client.put("after-snapshot", "1").await?;
    cluster.wait_revision(after.revision, T).await?;
    assert_eq!(cluster.dump(follower)?, cluster.dump(leader)?);
    cluster.shutdown().await;
    Ok(())
}

/// - Empty keys, keys over 4 KiB, values over 1 MiB and inverted ranges are refused with
///   INVALID_ARGUMENT and a message saying what is wrong; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut kv = raw_kv(&cluster.client_addr(leader)).await;
    let applied_before = cluster.applied_index(leader);
    let revision_before = cluster.revision(leader);
    let highest_term = || {
        cluster
            .running()
            .into_iter()
            .map(|id| cluster.node(id).raft.metrics().borrow_watched().current_term)
            .max()
            .unwrap_or(0)
    };
    let term_before = highest_term();

    let put = |key: Vec<u8>, value: Vec<u8>| PutRequest {
        key,
        value,
        prev_kv: false,
        lease: 0,
    };
    let cases: Vec<(&str, Result<(), tonic::Status>, &str)> = vec![
        (
            "empty key",
            kv.put(put(vec![], b"v".to_vec())).await.map(|_| ()),
            "key is empty",
        ),
        (
            "key over 4 KiB",
            kv.put(put(vec![b'k'; 4097], b"v".to_vec())).await.map(|_| ()),
            "the limit is 4096 bytes",
        ),
        (
            "value over 1 MiB",
            kv.put(put(b"k".to_vec(), vec![0; 1024 * 1024 + 1])).await.map(|_| ()),
            "the limit is 1048576 bytes",
        ),
        (
            "empty key delete",
            kv.delete(DeleteRequest {
                key: vec![],
                ..Default::default()
            })
            .await
            .map(|_| ()),
            "key is empty",
        ),
        (
            "inverted range",
            kv.range(RangeRequest {
                start: b"z".to_vec(),
                end: b"a".to_vec(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            "inverted range",
        ),
        (
            "prefix with bounds",
            kv.range(RangeRequest {
                start: b"a".to_vec(),
                prefix: b"p".to_vec(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            "not both",
        ),
        (
            "unknown consistency",
            kv.get(GetRequest {
                key: b"k".to_vec(),
                consistency: 42,
            })
            .await
            .map(|_| ()),
            "unknown consistency",
        ),
    ];
    for (what, result, expected) in cases {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: {:?}", status.message());
    }

    // A value of exactly the limit is fine (and proves the refusals were about size).
    // (Through the client library, which follows the leader should an election move it.)
    let ok = cluster.client().put(b"big".to_vec(), vec![7; 1024 * 1024]).await?;
    // Only that put changed the store (revisions count changes, not log entries)...
    assert_eq!(ok.revision, revision_before + 1, "a refused request changed the store");
    // ...and only it reached the log — besides the blank entry each new leader appends, if a
    // busy machine made the cluster hold elections meanwhile (one per term at most).
    let answered_by = ok.header.map_or(leader, |h| h.node_id);
    let new_terms = highest_term() - term_before;
    let others = cluster.applied_index(answered_by) - applied_before - 1;
    assert!(
        others <= new_terms,
        "no refused request reached the log: {others} entries besides the put, {new_terms} new terms"
    );
    assert_eq!(cluster.dump(answered_by)?.len(), 1);

    cluster.shutdown().await;
    Ok(())
}
