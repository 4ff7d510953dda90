//! Leases under faults (in-process cluster): a lease kept alive through five leader
//! failovers keeps its keys; leases survive a restart of every node (kept ones are kept, an
//! unkept one still expires afterwards); a follower that catches up by snapshot install holds
//! the leases and their keys.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use raftkv_client::LeaseState;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(20);
/// Three keep-alives per TTL; a failover (a few hundred ms in the harness) fits in one gap.
const TTL: Duration = Duration::from_secs(3);

async fn key_exists(client: &raftkv_client::Client, key: &str) -> anyhow::Result<bool> {
    Ok(client.get(key).await?.kv.is_some())
}

/// Five times: stop the leader, wait for a new one, check the key, restart the old leader.
/// The holder's keep-alives follow each new leader, which gives every lease a fresh TTL, so
/// the lease and its key survive all five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_survives_five_leader_failovers() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let lease = client.lease_grant(TTL).await?;
    client.put_with_lease("member/me", "here", lease.id).await?;
    let keep = client.keep_lease_alive(lease.id, TTL);

    for failover in 1..=5 {
        let leader = cluster.wait_for_leader(T).await?;
        tracing::info!(failover, leader, "--- stop the leader");
        cluster.stop(leader).await;
        let new_leader = cluster.wait_for_leader(T).await?;
        assert_ne!(new_leader, leader);
        assert!(
            key_exists(&client, "member/me").await?,
            "failover {failover}: the key is gone"
        );
        cluster.restart(leader).await?;
    }
    // A full TTL after the last failover the lease is still confirmed and its key still there.
    let until = tokio::time::Instant::now() + TTL;
    while tokio::time::Instant::now() < until {
        assert!(key_exists(&client, "member/me").await?, "the kept lease lost its key");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_ne!(keep.state(), LeaseState::Lost);
    assert_eq!(
        client.lease_time_to_live(lease.id, true).await?.keys,
        vec![b"member/me".to_vec()]
    );
    keep.stop().await;
    cluster.shutdown().await;
    Ok(())
}

/// Every node is stopped and started again: the leases are all still there with their keys
/// (the new leader gives each a fresh TTL, so the outage itself expires none), a holder can
/// go on keeping its lease alive, and a lease nobody keeps alive expires afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_of_every_node() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let kept = client.lease_grant(TTL).await?;
    client.put_with_lease("kept", "1", kept.id).await?;
    let long = client.lease_grant(Duration::from_secs(600)).await?;
    client.put_with_lease("long", "1", long.id).await?;
    let short = client.lease_grant(Duration::from_millis(1_500)).await?;
    client.put_with_lease("short", "1", short.id).await?;

    for id in cluster.running() {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await?;
    }
    cluster.wait_for_leader(T).await?;

    let ids: Vec<u64> = client.leases().await?.iter().map(|l| l.id).collect();
    assert!(
        ids.contains(&kept.id) && ids.contains(&long.id),
        "leases after restart: {ids:x?}"
    );
    // The holder keeps its lease alive from here on (the outage outlasted its TTL, so a
    // keep-alive running through it would rightly have reported it unconfirmed, then lost).
    let renewed = client.lease_keep_alive_once(kept.id).await?;
    assert_eq!(renewed.ttl_ms, 3_000);
    let keep = client.keep_lease_alive(kept.id, TTL);
    wait::until(T, "the short unkept lease to expire after the restart", || async {
        (!key_exists(&client, "short").await.ok()?).then_some(())
    })
    .await?;
    assert!(key_exists(&client, "kept").await?);
    assert!(key_exists(&client, "long").await?);
    assert_eq!(keep.state(), LeaseState::Alive);
    keep.stop().await;
    cluster.shutdown().await;
    Ok(())
}

/// A follower that was down while the leader snapshotted and purged its log catches up by
/// snapshot install, and then holds the lease and the lease's keys; a revoke afterwards deletes
/// them there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_carries_the_leases() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start_with(3, |c| {
        c.snapshot_every = 40;
        c.snapshot_keep_logs = 5;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.a_follower(leader)?;
    let client = cluster.client();

    cluster.stop(follower).await;
    let lease = client.lease_grant(Duration::from_secs(600)).await?;
    client.put_with_lease("leased/a", "1", lease.id).await?;
    client.put_with_lease("leased/b", "1", lease.id).await?;
    let value = vec![b'v'; 8 * 1024];
    for i in 0..300 {
        client.put(format!("bulk-{i:04}"), value.clone()).await?;
    }
    let last = client.put("last", "1").await?;
    let leader = cluster.wait_for_leader(T).await?;
    cluster.wait_purged(leader, T).await?;

    cluster.restart(follower).await?;
    cluster.wait_revision(last.revision, T).await?;
    let reader = cluster.node(follower).store.reader();
    assert!(
        cluster
            .node(follower)
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .is_some(),
        "the follower caught up by snapshot"
    );
    assert_eq!(reader.lease(lease.id)?.map(|l| l.ttl_ms), Some(600_000));
    assert_eq!(
        reader.lease_keys(lease.id)?,
        vec![b"leased/a".to_vec(), b"leased/b".to_vec()]
    );

    let revoked = client.lease_revoke(lease.id).await?;
    assert_eq!(revoked.deleted, 2);
    cluster
        .wait_revision(revoked.header.map(|h| h.revision).unwrap_or_default(), T)
        .await?;
    let reader = cluster.node(follower).store.reader();
    assert_eq!(reader.get(b"leased/a")?, None);
    assert_eq!(reader.lease(lease.id)?, None);
    cluster.shutdown().await;
    Ok(())
}
