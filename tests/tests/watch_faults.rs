//! A watcher across faults, on real `raftkvd` processes: the client library's watch resumes on
//! another node from the next revision whenever its node dies or freezes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::pb::event;
use raftkv_client::{ClientError, WatchOptions};
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(30);

/// - One writer puts `f/NNNNN` keys without pause (retrying what came back indeterminate or
///   unavailable with the same value); one watcher follows prefix `f/` through the client
///   library.
/// - Eight faults, in turn: SIGKILL the leader; SIGKILL the node the watcher is connected to;
///   SIGSTOP the watcher's node for 2 s; SIGSTOP the leader for 2 s (each killed node is
///   restarted and caught up before the next fault).
/// - At the end the watcher has received every change exactly once, in revision order, with
///   no gap (every change in the cluster is under `f/`, so revisions run without holes), every
///   acknowledged write among them with its value, and no change the writer never made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_gets_every_change_once_across_kills_and_pauses() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client_for(&[1, 2, 3], T);
    let mut watcher = client.watch(WatchOptions::prefix("f/")).await?;
    let start = watcher.next_revision();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let writer = {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("f/{i:05}"), format!("v{i}"));
                raftkv_tests::put_until_acknowledged(&client, &key, &value).await?;
                acked.lock().unwrap_or_else(|e| e.into_inner()).insert(key, value);
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        })
    };

    // The watcher runs on its own task; it shares which node it is on and what it received.
    let on_node: Arc<Mutex<Option<String>>> = Arc::default();
    let events: Arc<Mutex<Vec<(u64, String, String)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watching = {
        let (on_node, events, done) = (on_node.clone(), events.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                *on_node.lock().unwrap_or_else(|e| e.into_inner()) = watcher.node().map(str::to_string);
                let batch = match tokio::time::timeout(Duration::from_secs(2), watcher.next()).await {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(ClientError::Unavailable(_))) => continue,
                    Ok(Err(e)) => return Err(anyhow::anyhow!("watch failed: {e}")),
                    Err(_) if done.load(Ordering::SeqCst) => return Ok(watcher.next_revision()),
                    Err(_) => continue,
                };
                let mut got = events.lock().unwrap_or_else(|e| e.into_inner());
                for e in batch.events {
                    assert_eq!(e.r#type, event::EventType::Put as i32, "only puts were made");
                    let kv = e.kv.unwrap_or_default();
                    got.push((
                        kv.mod_revision,
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    ));
                }
            }
        })
    };

    let addrs: Vec<(u64, String)> = [1u64, 2, 3]
        .into_iter()
        .map(|id| (id, cluster.client_addr(id)))
        .collect();
    let id_of = |addr: &str| addrs.iter().find(|(_, a)| a == addr).map(|(id, _)| *id);
    for round in 0..8 {
        let before = events.lock().unwrap_or_else(|e| e.into_inner()).len();
        wait::until(T, &format!("round {round}: the watcher to receive changes"), || async {
            (events.lock().unwrap_or_else(|e| e.into_inner()).len() > before + 20).then_some(())
        })
        .await?;
        let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
        let watched = on_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .and_then(id_of)
            .unwrap_or(leader);
        let victim = if round % 2 == 0 { leader } else { watched };
        if round % 4 < 2 {
            tracing::info!(round, victim, "--- SIGKILL");
            cluster.kill(victim);
            cluster.start_node(victim)?;
            let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
            let target = cluster.revision(leader).await?;
            wait::until(T, &format!("round {round}: node {victim} to catch up"), || async {
                (cluster.revision(victim).await.ok()? >= target).then_some(())
            })
            .await?;
        } else {
            tracing::info!(round, victim, "--- SIGSTOP for 2 s");
            cluster.signal(victim, libc::SIGSTOP);
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.signal(victim, libc::SIGCONT);
        }
    }

    stop.store(true, Ordering::SeqCst);
    writer.await??;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let last = cluster.revision(leader).await?;
    wait::until(T, "the watcher to receive the last change", || async {
        let got = events.lock().unwrap_or_else(|e| e.into_inner());
        got.last().is_some_and(|(r, _, _)| *r >= last).then_some(())
    })
    .await?;
    done.store(true, Ordering::SeqCst);
    let next = watching.await??;
    assert!(next > last, "the watcher resumes after the last change");

    let got = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let revisions: Vec<u64> = got.iter().map(|(r, _, _)| *r).collect();
    // (A write that came back indeterminate may still have applied after `last`: the watcher
    // saw it too, so the run ends at the last revision it got.)
    let end = revisions.last().copied().unwrap_or(0);
    let expected: Vec<u64> = (start..=end).collect();
    assert_eq!(revisions, expected, "every revision once, in order, no gap");
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let seen: BTreeSet<(String, String)> = got.iter().map(|(_, k, v)| (k.clone(), v.clone())).collect();
    for (key, value) in &acked {
        assert!(
            seen.contains(&(key.clone(), value.clone())),
            "acknowledged {key} never watched"
        );
    }
    for (_, key, value) in &got {
        let n: u64 = key.trim_start_matches("f/").parse()?;
        assert_eq!(value, &format!("v{n}"), "a change nobody made: {key}={value}");
    }
    eprintln!(
        "watched {} changes (revisions {start}..={end}) across 8 faults; {} acknowledged writes all among them",
        got.len(),
        acked.len()
    );
    Ok(())
}
