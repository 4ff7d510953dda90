//! Leases end to end on a three-node cluster: keys attached to a lease go when it is revoked or
//! when it expires without keep-alives; a lease kept alive outlives its TTL; bad input gets a
//! clear status and changes nothing.

use std::time::Duration;

use raftkv_client::ClientError;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(15);
/// The harness's election timeout is at most 300 ms, so the minimum TTL is 5 × 300 = 1.5 s.
const TTL: Duration = Duration::from_millis(1_500);

async fn exists(client: &raftkv_client::Client, key: &str) -> bool {
    client.get(key).await.map(|r| r.kv.is_some()).unwrap_or(true)
}

/// - grant, two keys on the lease, one without: revoke deletes exactly the two.
/// - a lease nobody keeps alive expires, and its key is deleted on every node.
/// - a lease kept alive is still there after three TTLs, with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_with_their_lease_and_a_kept_lease_stays() -> anyhow::Result<()> {
    raftkv_tests::init_tracing();
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();

    let lease = client.lease_grant(TTL).await?;
    assert_eq!(lease.ttl_ms, 1_500);
    client.put_with_lease("a", "1", lease.id).await?;
    client.put_with_lease("b", "1", lease.id).await?;
    client.put("free", "1").await?;
    let ttl = client.lease_time_to_live(lease.id, true).await?;
    assert_eq!(ttl.keys, vec![b"a".to_vec(), b"b".to_vec()]);
    assert!(ttl.ttl_ms <= 1_500);
    let revoked = client.lease_revoke(lease.id).await?;
    assert_eq!(revoked.deleted, 2);
    assert!(!exists(&client, "a").await && !exists(&client, "b").await);
    assert!(exists(&client, "free").await);

    // Nobody keeps this one alive.
    let forgotten = client.lease_grant(TTL).await?;
    let put = client.put_with_lease("ephemeral", "x", forgotten.id).await?;
    cluster.wait_revision(put.revision, T).await?;
    // And this one is kept alive in the background.
    let kept = client.lease_grant(TTL).await?;
    client.put_with_lease("kept", "x", kept.id).await?;
    let keep = client.keep_lease_alive(kept.id, TTL);

    wait::until(T, "the forgotten lease's key to be deleted on every node", || async {
        let gone = cluster.running().into_iter().all(|id| {
            cluster
                .node(id)
                .store
                .reader()
                .get(b"ephemeral")
                .ok()
                .flatten()
                .is_none()
        });
        gone.then_some(())
    })
    .await?;
    assert!(matches!(
        client.lease_keep_alive_once(forgotten.id).await,
        Err(ClientError::NotFound(_))
    ));

    // Three TTLs later the kept lease and its key are still there.
    let until = tokio::time::Instant::now() + TTL * 3;
    while tokio::time::Instant::now() < until {
        assert!(exists(&client, "kept").await, "a lease kept alive lost its key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(keep.state(), raftkv_client::LeaseState::Alive);
    let ids: Vec<u64> = client.leases().await?.iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![kept.id]);
    keep.stop().await;
    cluster.shutdown().await;
    Ok(())
}

/// Bad input: a TTL below the minimum (named in the message), an unknown lease for a put,
/// revoking twice, granting an id in use — each a clear status, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_get_clear_statuses() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();

    match client.lease_grant(Duration::from_millis(100)).await {
        Err(ClientError::InvalidArgument(m)) => assert!(m.contains("1500 ms"), "{m}"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    match client.put_with_lease("k", "v", 0xabc).await {
        Err(ClientError::NotFound(m)) => assert!(m.contains("lease abc does not exist"), "{m}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    assert!(!exists(&client, "k").await, "a put on a missing lease wrote nothing");

    let lease = client.lease_grant_with_id(42, TTL).await?;
    assert_eq!(lease.id, 42);
    assert!(matches!(
        client.lease_grant_with_id(42, TTL).await,
        Err(ClientError::AlreadyExists(_))
    ));
    client.lease_revoke(42).await?;
    assert!(matches!(client.lease_revoke(42).await, Err(ClientError::NotFound(_))));
    assert!(client.leases().await?.is_empty());
    cluster.shutdown().await;
    Ok(())
}
