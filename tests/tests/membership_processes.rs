//! Membership, snapshots and backups with real `raftkvd` processes: a SIGKILLed follower catches
//! up by snapshot, a backup restores into a new cluster with identical data (a damaged one is
//! refused), and a membership change survives its leader's crash.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use raftkv_client::pb::Role;
use raftkv_client::{Client, ClientConfig};
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::{free_port, wait, workspace_binary};

const T: Duration = Duration::from_secs(30);

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// - A follower is SIGKILLed; the leader writes past several snapshots and purges; the follower
///   restarts and can only catch up through a snapshot, after which it holds the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start_with_flags(3, &["--snapshot-every", "50", "--snapshot-keep-logs", "5"])?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("follower");
    let client = cluster.client();
    client.put("before", "x").await?;
    let behind = cluster.applied_index(follower).await?;
    cluster.kill(follower);
    for i in 0..400 {
        client.put(format!("k{i:04}"), "v").await?;
    }
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != follower).collect();
    let purged = wait::until(T, "the leader to purge past the follower", || async {
        let s = client
            .status_of(
                &cluster.client_addr(cluster.wait_for_leader(&survivors, T).await.ok()?),
                T,
            )
            .await
            .ok()?;
        (s.purged_index > behind + 10).then_some(s.purged_index)
    })
    .await?;
    cluster.start_node(follower)?;
    let target = client.put("after", "x").await?.revision;
    wait::until(T, "the follower to catch up", || async {
        (cluster.revision(follower).await.ok()? >= target).then_some(())
    })
    .await?;
    let status = client.status_of(&cluster.client_addr(follower), T).await?;
    assert!(
        status.snapshot_index >= purged,
        "the follower installed a snapshot: its snapshot index {} vs the leader's purge {purged}",
        status.snapshot_index
    );
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    wait::until(T, "identical data", || async {
        (cluster.dump(follower).await.ok()? == cluster.dump(leader).await.ok()?).then_some(())
    })
    .await?;
    Ok(())
}

fn raftkv(args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("raftkv"))
        .args(args)
        .output()
        .expect("run raftkv")
}

/// Starts raftkvd as node `id` on a data dir made by `restore` or `recover` (no cluster flags:
/// it is a one-node cluster already); the guard ends it.
fn start_lone_node(id: &str, data_dir: &std::path::Path, client_addr: &str, peer_addr: &str) -> anyhow::Result<Guard> {
    let data_dir = data_dir.to_str().context("a UTF-8 data dir")?;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    Ok(Guard(
        Command::new(workspace_binary("raftkvd"))
            .args(["--id", id, "--data-dir", data_dir, "--client-addr", client_addr])
            .args(["--peer-addr", peer_addr, "--metrics-addr", &metrics_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

fn raftkvd(args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("raftkvd"))
        .args(args)
        .output()
        .expect("run raftkvd")
}

/// - `raftkv backup` writes a checksummed file; `raftkvd restore` builds a new single-node
///   cluster from it that holds identical data — keys, values and revisions — and takes writes.
/// - A backup with a flipped byte, or cut short, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_into_a_new_cluster() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();
    for i in 0..200 {
        client.put(format!("k{i:03}"), format!("v{i}")).await?;
    }
    client.put("k007", "changed").await?;
    client.delete("k008").await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cluster.backup");
    let endpoints = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");
    let out = raftkv(&["--endpoints", &endpoints, "backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original = {
        let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
        cluster.dump(leader).await?
    };

    // Damaged copies are refused.
    let bytes = std::fs::read(&file)?;
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    let cases = [
        ("flipped", flipped, "checksum"),
        ("cut", bytes[..bytes.len() - 100].to_vec(), "truncated"),
    ];
    for (name, content, why) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, content)?;
        let target = dir.path().join(format!("restore-{name}"));
        let out = raftkvd(&[
            "restore",
            "--from",
            bad.to_str().unwrap(),
            "--id",
            "1",
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{name}: {err}");
        assert!(!target.join("db").exists(), "{name}: nothing was created");
    }

    let data_dir = dir.path().join("restored");
    let (client_port, peer_port) = (free_port(), free_port());
    let client_addr = format!("127.0.0.1:{client_port}");
    let peer_addr = format!("127.0.0.1:{peer_port}");
    let out = raftkvd(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--id",
        "1",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--client-addr",
        &client_addr,
        "--peer-addr",
        &peer_addr,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _node = start_lone_node("1", &data_dir, &client_addr, &peer_addr)?;
    let restored = Client::new(ClientConfig::new([client_addr.clone()]))?;
    wait::until(T, "the restored node to lead", || async {
        let s = restored
            .status_of(&client_addr, Duration::from_millis(500))
            .await
            .ok()?;
        (s.role == Role::Leader as i32).then_some(())
    })
    .await?;
    let copy = wait::until(T, "the restored data", || async {
        let all = restored
            .range(
                raftkv_client::pb::RangeRequest {
                    consistency: raftkv_client::pb::Consistency::Stale as i32,
                    ..Default::default()
                },
                None,
            )
            .await
            .ok()?;
        Some(all.kvs)
    })
    .await?;
    assert_eq!(copy, original, "identical keys, values and revisions");
    let next = restored.put("new", "x").await?;
    let last = original.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
    assert!(next.revision > last, "revisions continue from the backup's");
    Ok(())
}

/// - Node 4 is being added (learner, catch-up, promotion by joint consensus) when the leader is
///   SIGKILLed. The change completes, or completes when retried through the new leader; at no
///   time do two nodes lead in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_survives_the_leaders_crash() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();
    for i in 0..300 {
        client.put(format!("k{i:03}"), vec![b'v'; 256]).await?;
    }
    let addrs = cluster.start_added_node(4, Vec::new())?;
    let (client_addr, peer_addr) = addrs.split_once('@').expect("CLIENT@PEER");

    // Watch every node's claimed role all along.
    let stop = Arc::new(AtomicBool::new(false));
    let leaders_by_term: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();
    let watcher = {
        let (stop, seen) = (stop.clone(), leaders_by_term.clone());
        let addrs: Vec<String> = [1, 2, 3, 4].map(|id| cluster.client_addr(id)).to_vec();
        let probe = Client::new(ClientConfig::new(addrs.clone()))?;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for addr in &addrs {
                    if let Ok(s) = probe.status_of(addr, Duration::from_millis(200)).await {
                        if s.role == Role::Leader as i32 {
                            seen.lock().unwrap().entry(s.term).or_default().insert(s.id);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let adding = {
        let (client, c, p) = (client.clone(), client_addr.to_string(), peer_addr.to_string());
        tokio::spawn(async move { client.add_member(4, &c, &p, false, Some(T)).await })
    };
    // Kill the leader once node 4 shows up in the membership: the change is under way.
    wait::until(T, "node 4 to be added as a learner", || async {
        let s = client
            .status_of(&cluster.client_addr(leader), Duration::from_millis(300))
            .await
            .ok()?;
        s.members.iter().any(|m| m.id == 4).then_some(())
    })
    .await?;
    tracing::info!(leader, "--- SIGKILL the leader mid-change");
    cluster.kill(leader);
    let first_try = adding.await?;
    tracing::info!(?first_try, "--- the first add returned");

    let survivors: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != leader).collect();
    let survivor_client = cluster.client_for(&survivors, T);
    wait::until(T, "node 4 to be a voter", || async {
        let members = match survivor_client
            .add_member(4, client_addr, peer_addr, false, Some(T))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::info!("retrying the add: {e}");
                return None;
            }
        };
        members.members.iter().any(|m| m.id == 4 && m.voter).then_some(())
    })
    .await?;
    survivor_client.put("after-change", "x").await?;

    stop.store(true, Ordering::Relaxed);
    watcher.await?;
    let seen = leaders_by_term.lock().unwrap().clone();
    assert!(!seen.is_empty(), "leaders were observed");
    for (term, leaders) in &seen {
        assert_eq!(leaders.len(), 1, "term {term} had leaders {leaders:?}");
    }
    Ok(())
}

/// - Two of three nodes are lost for good. The survivor is stopped, `raftkvd recover` builds a
///   new single-node cluster from its data dir, and that cluster serves everything the old one
///   acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_from_quorum_loss_with_the_survivors_data() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();
    for i in 0..100 {
        client.put(format!("k{i:03}"), format!("v{i}")).await?;
    }
    let last = client.put("last", "acknowledged").await?;
    let survivor = 3;
    wait::until(T, "the survivor to apply the last write", || async {
        (cluster.revision(survivor).await.ok()? >= last.revision).then_some(())
    })
    .await?;
    cluster.kill(1);
    cluster.kill(2);
    assert!(
        client.put("no-quorum", "x").await.is_err(),
        "with two of three gone, writes must fail"
    );
    assert_eq!(cluster.terminate(survivor, T).await, Some(0));

    let new_dir = tempfile::tempdir()?;
    let data_dir = new_dir.path().join("recovered");
    let (client_addr, peer_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let from = cluster.data_dir(survivor);
    let out = raftkvd(&[
        "recover",
        "--from-data-dir",
        from.to_str().unwrap(),
        "--id",
        "3",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--client-addr",
        &client_addr,
        "--peer-addr",
        &peer_addr,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _node = start_lone_node("3", &data_dir, &client_addr, &peer_addr)?;
    let recovered = Client::new(ClientConfig::new([client_addr.clone()]))?;
    let got = wait::until(T, "the recovered cluster to serve", || async {
        recovered.get("last").await.ok()?.kv
    })
    .await?;
    assert_eq!(got.value, b"acknowledged");
    assert_eq!(got.mod_revision, last.revision);
    for i in [0, 50, 99] {
        let kv = recovered.get(format!("k{i:03}")).await?.kv.expect("kept");
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    recovered.put("after-recovery", "x").await?;
    Ok(())
}
