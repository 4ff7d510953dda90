//! The client toolkit against real `raftkvd` processes: writers keep going through two leader
//! crashes with nothing applied twice, and a frozen node trips its breaker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::pb::Consistency;
use raftkv_client::ClientError;
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(30);
const WRITERS: u64 = 16;

#[derive(Default, Debug, Clone)]
struct Tally {
    acked: u64,
    indeterminate: u64,
    last_acked_value: Option<String>,
}

/// - 16 tasks write continuously, each to its own counter key, through one client.
/// - The leader is SIGKILLed and restarted, twice.
/// - No call returns an error other than Indeterminate.
/// - Every key's version (one per applied put) is at least the acknowledged puts and at most
///   those plus the indeterminate ones: nothing acknowledged is lost and no retry applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_survive_two_leader_crashes_with_nothing_applied_twice() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();
    let stop = Arc::new(AtomicBool::new(false));
    let total_acked = Arc::new(AtomicU64::new(0));
    let tallies: Arc<Mutex<BTreeMap<u64, Tally>>> = Arc::default();
    let other_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, stop, total, tallies, errors) = (
            client.clone(),
            stop.clone(),
            total_acked.clone(),
            tallies.clone(),
            other_errors.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let value = format!("{w}-{i}");
                let outcome = client.put(format!("counter/{w:02}"), value.clone()).await;
                let mut tallies = tallies.lock().unwrap();
                let t = tallies.entry(w).or_default();
                match outcome {
                    Ok(_) => {
                        t.acked += 1;
                        t.last_acked_value = Some(value);
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(ClientError::Indeterminate(_)) => t.indeterminate += 1,
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }

    for round in 1..=2 {
        let before = total_acked.load(Ordering::SeqCst);
        wait::until(T, "writes to make progress", || async {
            (total_acked.load(Ordering::SeqCst) >= before + 200).then_some(())
        })
        .await?;
        let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
        tracing::info!(round, leader, "--- SIGKILL the leader");
        cluster.kill(leader);
        let after_kill = total_acked.load(Ordering::SeqCst);
        wait::until(T, "writes to resume on a new leader", || async {
            (total_acked.load(Ordering::SeqCst) >= after_kill + 200).then_some(())
        })
        .await?;
        cluster.start_node(leader)?;
        cluster.wait_for_leader(&[1, 2, 3], T).await?;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await?;
    }
    let errors = other_errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "only Indeterminate is allowed: {errors:?}");

    let tallies = tallies.lock().unwrap().clone();
    let reader = cluster.client();
    let mut indeterminate = 0;
    for (w, t) in &tallies {
        let kv = reader
            .get_with(format!("counter/{w:02}"), Consistency::Linearizable, None)
            .await?
            .kv
            .expect("every counter was written");
        assert!(
            kv.version >= t.acked && kv.version <= t.acked + t.indeterminate,
            "writer {w}: version {} outside [{}, {}]",
            kv.version,
            t.acked,
            t.acked + t.indeterminate
        );
        if t.indeterminate == 0 {
            assert_eq!(Some(String::from_utf8(kv.value)?), t.last_acked_value);
        }
        indeterminate += t.indeterminate;
    }
    let acked: u64 = tallies.values().map(|t| t.acked).sum();
    tracing::info!(acked, indeterminate, "--- done");
    Ok(())
}

/// - A follower is frozen with SIGSTOP while 16 tasks read through one client. Its breaker
///   opens; from then on reads are served by the other two, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_trips_its_breaker_and_reads_move_to_the_others() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let paused = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client();
    client.put("k", "v").await?;
    cluster.signal(paused, libc::SIGSTOP);

    let paused_addr = cluster.client_addr(paused);
    wait::until(T, "the paused node's breaker to open", || async {
        let mut readers = Vec::new();
        for _ in 0..16 {
            let client = client.clone();
            readers.push(tokio::spawn(async move {
                client.get_with("k", Consistency::Stale, None).await
            }));
        }
        for r in readers {
            r.await.ok()?.expect("reads keep working while a node is frozen");
        }
        let view = client.endpoints().into_iter().find(|e| e.addr == paused_addr)?;
        (view.breaker == "open").then_some(())
    })
    .await?;

    for _ in 0..50 {
        let r = client.get_with("k", Consistency::Stale, None).await?;
        assert_ne!(
            r.header.expect("header").node_id,
            paused,
            "a read reached the frozen node"
        );
    }
    cluster.signal(paused, libc::SIGCONT);
    Ok(())
}
