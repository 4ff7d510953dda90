//! Locks and elections on a three-node cluster (in-process): fencing tokens only grow, a
//! write guarded by a holder's token is refused once a newer holder took over, contenders
//! under leader failovers and partitions never overlap, and an election hands over in
//! campaign order while an observer follows it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::txn;
use raftkv_client::ClientError;
use raftkv_tests::in_process::InProcessCluster;

const T: Duration = Duration::from_secs(20);
/// The harness's minimum TTL (5 × its 300 ms election maximum).
const TTL: Duration = Duration::from_millis(1_500);

fn value_of(r: &raftkv_client::pb::GetResponse) -> u64 {
    r.kv.as_ref()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// - A holds the lock; B waits in line.
/// - A's lease is revoked behind its back (as if it had stalled past its TTL): B gets the lock
///   with a higher token, and A's guarded write is refused while B's is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_cannot_write_after_a_newer_one_took_over() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let (a, b, admin) = (cluster.client(), cluster.client(), cluster.client());

    let held_by_a = a.lock("resource", TTL).await?;
    let b_waits = tokio::spawn(async move { b.lock("resource", TTL).await });
    // B is in line behind A: its key is there, and it does not hold the lock.
    raftkv_tests::wait::until(T, "B's place in the queue", || async {
        let r = admin
            .range(
                raftkv_client::pb::RangeRequest {
                    prefix: b"locks/resource/".to_vec(),
                    ..Default::default()
                },
                None,
            )
            .await
            .ok()?;
        (r.kvs.len() == 2).then_some(())
    })
    .await?;
    assert!(!b_waits.is_finished(), "B must wait while A holds the lock");

    admin.lease_revoke(held_by_a.lease()).await?;
    let held_by_b = tokio::time::timeout(T, b_waits).await???;
    assert!(
        held_by_b.token() > held_by_a.token(),
        "tokens grow: A {} then B {}",
        held_by_a.token(),
        held_by_b.token()
    );

    let stale = held_by_a.guarded_txn(vec![txn::put("protected", "from A")]).await?;
    assert!(!stale.succeeded, "A's write after B took over must be refused");
    let fresh = held_by_b.guarded_txn(vec![txn::put("protected", "from B")]).await?;
    assert!(fresh.succeeded);
    let value = admin.get("protected").await?.kv.map(|kv| kv.value);
    assert_eq!(value, Some(b"from B".to_vec()));

    held_by_b.unlock().await?;
    let left = admin
        .range(
            raftkv_client::pb::RangeRequest {
                prefix: b"locks/resource/".to_vec(),
                ..Default::default()
            },
            None,
        )
        .await?;
    assert!(left.kvs.is_empty(), "unlock deletes the lock key: {:?}", left.kvs);
    cluster.shutdown().await;
    Ok(())
}

/// Waits until the contenders applied one more guarded increment.
async fn progress(applied: &Mutex<Vec<u64>>, when: &str) -> anyhow::Result<()> {
    let before = applied.lock().unwrap().len();
    raftkv_tests::wait::until(T, &format!("a lock holder's increment {when}"), || async {
        (applied.lock().unwrap().len() > before).then_some(())
    })
    .await
}

/// Four contenders take the lock in turn and, holding it, increment a counter with a read and
/// a write guarded by their token, while the leader is stopped and restarted and a follower
/// is cut off and healed. Every guarded write that was applied carries a token higher than
/// the one before it, and the counter equals the number of applied increments: no two holders
/// ever interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_under_failovers_never_overlap_and_tokens_only_grow() -> anyhow::Result<()> {
    let mut cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let applied_tokens = Arc::new(Mutex::new(Vec::<u64>::new()));
    let unknown = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut contenders = Vec::new();
    for _ in 0..4 {
        let client = cluster.client();
        let applied_tokens = applied_tokens.clone();
        let unknown = unknown.clone();
        let stop = stop.clone();
        contenders.push(tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let guard = match client.lock("counter", TTL).await {
                    Ok(g) => g,
                    Err(_) => continue, // a failover or a lost lease while waiting: queue again
                };
                let Ok(current) = client.get("counter").await else {
                    continue;
                };
                let next = value_of(&current) + 1;
                match guard.guarded_txn(vec![txn::put("counter", next.to_string())]).await {
                    Ok(r) if r.succeeded => {
                        applied_tokens.lock().unwrap().push(guard.token());
                        rounds += 1;
                    }
                    Ok(_) => {} // lost the lock meanwhile: the write was refused, as it must be
                    Err(_) => {
                        unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = guard.unlock().await;
            }
            rounds
        }));
    }

    for round in 0..2 {
        let leader = cluster.wait_for_leader(T).await?;
        tracing::info!(round, leader, "--- stop the leader");
        cluster.stop(leader).await;
        cluster.wait_for_leader(T).await?;
        progress(&applied_tokens, "under the new leader").await?;
        cluster.restart(leader).await?;
        let leader = cluster.wait_for_leader(T).await?;
        let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap_or(leader);
        tracing::info!(round, follower, "--- cut a follower off");
        cluster.isolate(follower);
        progress(&applied_tokens, "without the cut-off follower").await?;
        cluster.heal_links();
    }

    progress(&applied_tokens, "after the faults").await?;
    stop.store(true, Ordering::Relaxed);
    let mut total_rounds = 0;
    for c in contenders {
        total_rounds += tokio::time::timeout(Duration::from_secs(90), c).await??;
    }
    let tokens = applied_tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), total_rounds);
    assert!(total_rounds >= 4, "the contenders made progress: {total_rounds} rounds");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "applied guarded writes carry strictly growing tokens: {tokens:?}"
    );
    let client = cluster.client();
    let counter = value_of(&client.get("counter").await?);
    let unknown = unknown.load(Ordering::Relaxed);
    assert!(
        counter >= tokens.len() as u64 && counter <= tokens.len() as u64 + unknown,
        "counter {counter}, applied increments {}, unknown outcomes {unknown}",
        tokens.len()
    );
    cluster.shutdown().await;
    Ok(())
}

/// Three candidates campaign; they lead one at a time in campaign order, an observer sees each
/// leader's value in turn, a leader's proclaimed value reaches the observer, and a resigned
/// leader can no longer proclaim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_hands_over_in_campaign_order() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let mut observer = client.observe_election("db-primary").await?;
    assert_eq!(observer.next().await?, None, "nobody leads before the first campaign");

    let first = client.campaign("db-primary", "10.0.0.1", TTL).await?;
    let seen = tokio::time::timeout(T, observer.next()).await??;
    assert_eq!(seen.map(|l| l.value), Some(b"10.0.0.1".to_vec()));

    let mut waiting = Vec::new();
    for (i, addr) in ["10.0.0.2", "10.0.0.3"].into_iter().enumerate() {
        let c = cluster.client();
        waiting.push(tokio::spawn(async move { c.campaign("db-primary", addr, TTL).await }));
        // Campaign order decides who leads next: wait until this one is in line.
        let queued = 2 + i;
        raftkv_tests::wait::until(T, "the candidate in line", || async {
            let r = client
                .range(
                    raftkv_client::pb::RangeRequest {
                        prefix: b"elections/db-primary/".to_vec(),
                        ..Default::default()
                    },
                    None,
                )
                .await
                .ok()?;
            (r.kvs.len() == queued).then_some(())
        })
        .await?;
    }

    first.proclaim("10.0.0.1:5433").await?;
    let seen = tokio::time::timeout(T, observer.next()).await??;
    assert_eq!(seen.map(|l| l.value), Some(b"10.0.0.1:5433".to_vec()));
    assert_eq!(
        client.election_leader("db-primary").await?.map(|l| l.value),
        Some(b"10.0.0.1:5433".to_vec())
    );

    let guard = first.guard();
    first.resign().await?;
    let second = tokio::time::timeout(T, waiting.remove(0)).await???;
    assert!(!waiting[0].is_finished(), "the third candidate still waits");
    let seen = tokio::time::timeout(T, observer.next()).await??;
    assert_eq!(seen.map(|l| l.value), Some(b"10.0.0.2".to_vec()));
    // The first leader's guard no longer holds.
    let late = client
        .txn(
            raftkv_client::pb::TxnRequest {
                compare: vec![guard],
                success: vec![txn::put("config", "from the old leader")],
                failure: vec![],
            },
            None,
        )
        .await?;
    assert!(!late.succeeded);
    assert!(second.revision() > 0);
    second.resign().await?;
    let third = tokio::time::timeout(T, waiting.remove(0)).await???;
    let seen = tokio::time::timeout(T, observer.next()).await??;
    assert_eq!(seen.map(|l| l.value), Some(b"10.0.0.3".to_vec()));
    let name = third.name().to_string();
    third.resign().await?;
    assert!(client.election_leader(&name).await?.is_none());
    assert!(matches!(
        client.campaign("a/b", "x", TTL).await,
        Err(ClientError::InvalidArgument(_))
    ));
    cluster.shutdown().await;
    Ok(())
}
