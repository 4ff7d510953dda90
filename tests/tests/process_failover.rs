//! Real `raftkvd` processes on loopback: the leader is SIGKILLed in the middle of a write load
//! and nothing acknowledged is lost; the killed node comes back and converges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::pb::{Consistency, Role};
use raftkv_client::ClientError;
use raftkv_tests::process::{as_text, ProcessCluster};
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(20);
const WRITERS: usize = 8;
const KEYS_PER_WRITER: usize = 125;

/// - Three nodes; 8 concurrent clients write 1,000 distinct keys.
/// - After 300 acknowledgements the leader is SIGKILLed.
/// - A new leader is elected among the survivors; every acknowledged write is readable from
///   them. (A write that came back Indeterminate is retried: re-putting the same value is
///   harmless, and it makes the final data set exact.)
/// - The killed node restarts from its data dir, catches up to the leader's applied index, and
///   all three nodes then hold identical data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_crash() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    tracing::info!(leader, "--- cluster up");

    let client = cluster.client();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let ack_count = Arc::new(AtomicUsize::new(0));
    let indeterminate = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, acked, ack_count, indeterminate) =
            (client.clone(), acked.clone(), ack_count.clone(), indeterminate.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..KEYS_PER_WRITER {
                let (key, value) = (format!("w{w}-{i:03}"), format!("value-{w}-{i}"));
                let deadline = tokio::time::Instant::now() + T;
                loop {
                    match client.put(key.clone(), value.clone()).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key.clone(), value.clone());
                            ack_count.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(ClientError::Indeterminate(_)) => {
                            indeterminate.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(ClientError::Unavailable(_)) => {}
                        Err(e) => panic!("unexpected error writing {key}: {e}"),
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{key} not acknowledged within {T:?}"
                    );
                }
            }
        }));
    }

    wait::until(T, "300 acknowledged writes", || async {
        (ack_count.load(Ordering::SeqCst) >= 300).then_some(())
    })
    .await?;
    tracing::info!(leader, "--- SIGKILL the leader");
    cluster.kill(leader);
    for w in writers {
        w.await?;
    }
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_for_leader(&survivors, T).await?;
    assert_ne!(new_leader, leader);
    tracing::info!(
        new_leader,
        indeterminate = indeterminate.load(Ordering::SeqCst),
        "--- all writes acknowledged"
    );

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), WRITERS * KEYS_PER_WRITER);
    let readers = cluster.client_for(&survivors, Duration::from_secs(5));
    for (key, value) in &acked {
        let got = readers.get_with(key.clone(), Consistency::Linearizable, None).await?;
        assert_eq!(
            got.kv.map(|kv| kv.value),
            Some(value.clone().into_bytes()),
            "{key} lost"
        );
    }

    tracing::info!(leader, "--- restart the killed node");
    cluster.start_node(leader)?;
    let data = cluster.wait_converged(&[1, 2, 3], T).await?;
    assert_eq!(data.len(), WRITERS * KEYS_PER_WRITER);
    Ok(())
}

/// - SIGTERM stops a node cleanly (exit code 0, promptly); the other two keep serving; the node
///   restarts from its data with everything it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_data() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();
    let put = client.put("k", "before").await?;

    let code = cluster.terminate(leader, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "raftkvd exits 0 after SIGTERM");
    assert!(cluster.logs(leader).contains("SIGTERM received"));
    assert!(cluster.logs(leader).contains("stopped"));

    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.wait_for_leader(&survivors, T).await?;
    client.put("k", "after").await?;

    cluster.start_node(leader)?;
    wait::until(T, "the restarted node to have applied its old writes", || async {
        (cluster.revision(leader).await.ok()? >= put.revision).then_some(())
    })
    .await?;
    let reader = cluster.client_for(&[leader], Duration::from_secs(5));
    wait::until(T, "the restarted node to catch up", || async {
        let r = reader.get_with("k", Consistency::Stale, None).await.ok()?;
        (r.kv?.value == b"after").then_some(())
    })
    .await?;
    Ok(())
}

/// - A follower is SIGKILLed and restarted while the leader is healthy.
/// - It catches up, and the cluster keeps the same leader in the same term: with pre-vote, a
///   restarted node cannot raise its term while the others still hear the leader, so it does
///   not force an election on a cluster that was fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_rejoins_without_deposing_the_leader() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client();
    client.put("k", "before").await?;

    cluster.kill(follower);
    let last = client.put("k", "while-down").await?;
    let status = client.status_of(&cluster.client_addr(leader), T).await?;
    let term_before = status.term;

    cluster.start_node(follower)?;
    wait::until(T, "the restarted follower to catch up", || async {
        (cluster.revision(follower).await.ok()? >= last.revision).then_some(())
    })
    .await?;
    let after = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let status = client.status_of(&cluster.client_addr(after), T).await?;
    assert_eq!(
        (after, status.term),
        (leader, term_before),
        "the restarted follower forced an election"
    );
    Ok(())
}

/// - The leader is SIGKILLed under a write load and restarted at once, before the followers'
///   election timeout runs out.
/// - It must not lead again in its old term. The leader sends entries to the followers before
///   its own fsync of them ends, so a crash can leave the followers holding entries the leader
///   lost; a leader resuming its term would write other entries under the same log ids, which
///   the followers take as ones they already have — the replicas would silently diverge. So the
///   cluster elects a leader in a later term (the restarted node may win it).
/// - Every acknowledged write is kept and the three nodes end with identical data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_does_not_resume_its_old_term() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();
    let term_before = client.status_of(&cluster.client_addr(leader), T).await?.term;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let writer = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..400 {
                let (key, value) = (format!("k{i:03}"), format!("v{i}"));
                raftkv_tests::put_until_acknowledged(&client, &key, &value).await?;
                acked.lock().unwrap_or_else(|e| e.into_inner()).insert(key, value);
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    wait::until(T, "100 acknowledged writes", || async {
        (acked.lock().unwrap_or_else(|e| e.into_inner()).len() >= 100).then_some(())
    })
    .await?;

    cluster.kill(leader);
    cluster.start_node(leader)?;
    let (new_leader, term) = wait::until(T, "a leader in a later term", || async {
        for id in [1, 2, 3] {
            let s = client
                .status_of(&cluster.client_addr(id), Duration::from_millis(300))
                .await
                .ok()?;
            if s.role == Role::Leader as i32 && s.term > term_before {
                return Some((id, s.term));
            }
        }
        None
    })
    .await
    .map_err(|e| e.context(format!("node {leader} led term {term_before} before its restart")))?;
    tracing::info!(leader, new_leader, term_before, term, "--- a leader in a later term");

    writer.await??;
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let data = as_text(cluster.wait_converged(&[1, 2, 3], T).await?);
    assert_eq!(data, acked, "the data differs from the acknowledged writes");
    Ok(())
}
