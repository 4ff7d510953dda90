//! A frozen node and a leader stopped on purpose, with real `raftkvd` processes:
//! - a follower paused with SIGSTOP and resumed causes no election and no HTTP/2 GOAWAY;
//! - a leader stopped with SIGTERM under write load hands leadership over first: no
//!   acknowledged write is lost and the write outage is one hand-off, not an election timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_client::pb::Consistency;
use raftkv_client::ClientError;
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(20);

/// What a node's HTTP/2 server logs when a peer's reset streams trip its limit (and it answers
/// with GOAWAY `too_many_resets`).
const RESET_STORM: [&str; 3] = [
    "GOAWAY",
    "too_many_resets",
    "reset pending-accept streams reached limit",
];

/// Writes sequential keys through `client` until `stop`; records each acknowledged one with the
/// time it was acknowledged.
fn spawn_writer(
    client: raftkv_client::Client,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Instant>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let key = format!("w{i:06}");
            match client.put(key.clone(), "v").await {
                Ok(_) => {
                    acked.lock().unwrap().insert(key, Instant::now());
                    i += 1;
                }
                Err(ClientError::Unavailable(_)) | Err(ClientError::Indeterminate(_)) => {}
                Err(e) => panic!("unexpected error writing {key}: {e}"),
            }
        }
    })
}

/// The longest gap between consecutive acknowledgements.
fn longest_gap(acked: &BTreeMap<String, Instant>) -> Duration {
    let mut times: Vec<Instant> = acked.values().copied().collect();
    times.sort();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// - Writes run while a follower is frozen with SIGSTOP for two seconds, then resumed.
/// - No election: every node ends in the leader's term, with the same leader; the follower
///   catches up.
/// - No node's log shows a reset storm or a GOAWAY: the leader kept at most one request
///   outstanding to the frozen follower instead of timing out (and resetting) one per heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_resumes_without_an_election_or_a_goaway() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client_for(&[leader], T);
    let term = client.status_of(&cluster.client_addr(leader), T).await?.term;

    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(BTreeMap::new())));
    let writer = spawn_writer(client.clone(), stop.clone(), acked.clone());
    wait::until(T, "writes to flow", || async {
        (acked.lock().unwrap().len() >= 20).then_some(())
    })
    .await?;

    cluster.signal(follower, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(2)).await; // the pause itself, not a synchronization
    cluster.signal(follower, libc::SIGCONT);
    let last = client.put("after-resume", "v").await?;
    stop.store(true, Ordering::SeqCst);
    writer.await?;

    wait::until(T, "the resumed follower to catch up", || async {
        (cluster.revision(follower).await.ok()? >= last.revision).then_some(())
    })
    .await?;
    for id in [1, 2, 3] {
        let s = client.status_of(&cluster.client_addr(id), T).await?;
        assert_eq!((s.term, s.leader_id), (term, leader), "node {id}: an election happened");
    }
    for id in [1, 2, 3] {
        let log = cluster.logs(id);
        for sign in RESET_STORM {
            assert!(!log.contains(sign), "node {id} logged {sign:?}:\n{log}");
        }
    }
    Ok(())
}

/// - Writes run through a client that knows every node while the leader gets SIGTERM.
/// - The leader hands leadership to a follower before it stops (its log says to whom), and that
///   follower leads afterwards.
/// - Every acknowledged write is on the new leader; the longest write outage is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_without_losing_writes() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let client = cluster.client();

    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(BTreeMap::new())));
    let writer = spawn_writer(client.clone(), stop.clone(), acked.clone());
    wait::until(T, "writes to flow", || async {
        (acked.lock().unwrap().len() >= 50).then_some(())
    })
    .await?;

    assert_eq!(
        cluster.terminate(leader, T).await,
        Some(0),
        "SIGTERM should stop it cleanly"
    );
    let before = acked.lock().unwrap().len();
    wait::until(T, "writes to flow again", || async {
        (acked.lock().unwrap().len() >= before + 50).then_some(())
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    writer.await?;

    let log = cluster.logs(leader);
    let handed = log
        .lines()
        .find_map(|l| l.split("handed leadership to node ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("the leader did not hand over before stopping:\n{log}"));
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    assert_eq!(cluster.wait_for_leader(&survivors, T).await?, handed);

    let acked = acked.lock().unwrap().clone();
    let reader = cluster.client_for(&[handed], T);
    for key in acked.keys() {
        let got = reader.get_with(key.clone(), Consistency::Linearizable, None).await?;
        assert!(got.kv.is_some(), "acknowledged write {key} was lost");
    }
    println!(
        "leader SIGTERM: {} writes acknowledged, longest write outage {} ms",
        acked.len(),
        longest_gap(&acked).as_millis()
    );
    Ok(())
}

/// - The leader is frozen; a follower gets a linearizable read with a 400 ms deadline, which it
///   cannot serve in time (the leader does not answer its read-index request).
/// - The follower answers `DEADLINE_EXCEEDED` saying what ran out, as `kv.proto` promises (not
///   tonic's `CANCELLED "Timeout expired"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_deadline_exceeded() -> anyhow::Result<()> {
    use raftkv_client::pb::kv_client::KvClient;
    use raftkv_client::pb::GetRequest;

    let cluster = ProcessCluster::start(3)?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    cluster.client().put("k", "v").await?;
    let mut kv = KvClient::connect(format!("http://{}", cluster.client_addr(follower))).await?;

    cluster.signal(leader, libc::SIGSTOP);
    let mut get = tonic::Request::new(GetRequest {
        key: b"k".to_vec(),
        consistency: Consistency::Linearizable as i32,
    });
    get.set_timeout(Duration::from_millis(400));
    let answer = kv.get(get).await;
    cluster.signal(leader, libc::SIGCONT);

    let status = answer.expect_err("a read the leader cannot confirm was served");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline of 400 ms"), "{}", status.message());
    Ok(())
}
