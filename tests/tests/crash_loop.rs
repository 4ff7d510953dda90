//! The cluster crash loop: real `raftkvd` processes under a steady write load, one of them
//! SIGKILLed at a random moment and restarted, round after round. The Raft log is written by
//! raftkv's own write-ahead log, so this is where a torn or lost append would show: every
//! acknowledged write must be there at the end, on every node, and every restarted node must
//! rejoin (catch up to the leader) before the next round.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_tests::process::{as_text, ProcessCluster};
use raftkv_tests::wait;
use rand::Rng;

const T: Duration = Duration::from_secs(30);
const ROUNDS: usize = 50;
const WRITERS: usize = 4;

/// - Four writers put distinct keys without pause; a write that came back indeterminate or
///   unavailable is retried with the same value (harmless if it had applied).
/// - 50 times: a random node (the leader as often as any) is SIGKILLed 20–200 ms into the round,
///   restarted, and must catch up to the leader's applied index.
/// - At the end the three nodes hold identical data, with every acknowledged key's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_fifty_random_kills_and_every_restart_rejoins() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client_for(&[1, 2, 3], T);
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, acked, count, stop) = (client.clone(), acked.clone(), count.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("w{w}-{i:06}"), format!("v{w}-{i}"));
                raftkv_tests::put_until_acknowledged(&client, &key, &value).await?;
                acked.lock().unwrap_or_else(|e| e.into_inner()).insert(key, value);
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let before = count.load(Ordering::SeqCst);
        wait::until(T, "writes to go on", || async {
            (count.load(Ordering::SeqCst) > before).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        let victim = rng.random_range(1..=3u64);
        cluster.kill(victim);
        cluster.start_node(victim)?;
        let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
        let target = cluster.applied_index(leader).await?;
        wait::until(
            T,
            &format!("round {round}: node {victim} to catch up to {target}"),
            || async {
                let applied = cluster.applied_index(victim).await.ok()?;
                (applied >= target).then_some(())
            },
        )
        .await?;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await??;
    }

    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(acked.len() > ROUNDS, "only {} writes were acknowledged", acked.len());
    // The three replicas must hold the same data (not just each acknowledged key): a replica
    // that diverged would show here even for a key nobody was told about.
    let data = as_text(cluster.wait_converged(&[1, 2, 3], T).await?);
    for (key, value) in &acked {
        assert_eq!(data.get(key), Some(value), "the cluster lost acknowledged write {key}");
    }
    Ok(())
}
