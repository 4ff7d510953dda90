//! Partitions that heal without disruption: pre-vote keeps an isolated follower's term where it
//! was, check-quorum makes an isolated leader step down and refuse clients at once, and the old
//! leader rejoins without campaigning. In-process nodes, links cut with `LinkFaults`.

use openraft::async_runtime::WatchReceiver;
use std::time::{Duration, Instant};

use raftkv_client::pb::cluster_client::ClusterClient;
use raftkv_client::pb::kv_client::KvClient;
use raftkv_client::pb::{PutRequest, Role, StatusRequest};
use raftkv_client::{Client, ClientConfig};
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;

const T: Duration = Duration::from_secs(10);
/// How long a partition lasts: several election timeouts of the harness (150–300 ms).
const PARTITION: Duration = Duration::from_millis(1500);

fn terms(cluster: &InProcessCluster) -> Vec<(u64, u64)> {
    cluster
        .running()
        .into_iter()
        .map(|id| (id, cluster.node(id).raft.metrics().borrow_watched().current_term))
        .collect()
}

async fn status(cluster: &InProcessCluster, id: u64) -> anyhow::Result<raftkv_client::pb::StatusResponse> {
    let mut c = ClusterClient::connect(format!("http://{}", cluster.client_addr(id))).await?;
    Ok(c.status(StatusRequest {}).await?.into_inner())
}

/// - A follower is cut off from both others for several election timeouts, then the links heal.
/// - Pre-vote: it never raises its term while cut off (it cannot win), so when it returns no
///   election happens: the same leader, in the same term, on every node; it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_rejoins_without_an_election() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let client = cluster.client();
    client.put("before", "1").await?;
    let term = cluster.node(leader).raft.metrics().borrow_watched().current_term;

    cluster.isolate(follower);
    tokio::time::sleep(PARTITION).await; // the fault's duration, not a synchronization
    let written = client.put("during", "2").await?;
    assert_eq!(
        cluster.node(follower).raft.metrics().borrow_watched().current_term,
        term,
        "the cut-off follower raised its term"
    );
    cluster.heal_links();

    wait::until(T, "the follower to catch up", || async {
        (cluster.revision(follower) >= written.revision).then_some(())
    })
    .await?;
    assert_eq!(cluster.wait_for_leader(T).await?, leader, "leadership changed");
    assert!(
        terms(&cluster).iter().all(|(_, t)| *t == term),
        "an election happened: terms {:?}, was {term}",
        terms(&cluster)
    );
    cluster.shutdown().await;
    Ok(())
}

/// - The leader is cut off from both followers.
/// - Check-quorum: within about one election timeout it has stepped down — Status says
///   `ROLE_STEPPED_DOWN` and names no leader — and a write sent to it fails with UNAVAILABLE at
///   once, not at the client's deadline.
/// - The others elect a new leader. When the links heal, the old leader follows it without
///   campaigning: its term becomes the new leader's, and no further election happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down_and_rejoins_without_campaigning() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let old = cluster.wait_for_leader(T).await?;
    cluster.client().put("k", "before").await?;

    cluster.isolate(old);
    let stepped_down = wait::until(T, "the isolated leader to step down", || async {
        let s = status(&cluster, old).await.ok()?;
        (s.role == Role::SteppedDown as i32).then_some(s)
    })
    .await?;
    assert_eq!(stepped_down.leader_id, 0, "a stepped-down leader names no leader");

    let mut kv = KvClient::connect(format!("http://{}", cluster.client_addr(old))).await?;
    let mut put = tonic::Request::new(PutRequest {
        key: b"k".to_vec(),
        value: b"to-the-isolated-leader".to_vec(),
        ..Default::default()
    });
    put.set_timeout(Duration::from_secs(8));
    let started = Instant::now();
    let refused = kv.put(put).await.expect_err("an isolated leader took a write");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the refusal waited for the deadline: {:?}",
        started.elapsed()
    );
    assert!(refused.message().contains("stepped down"), "{}", refused.message());

    let others: Vec<u64> = cluster.running().into_iter().filter(|id| *id != old).collect();
    let new = wait::until(T, "a new leader among the others", || async {
        let m = cluster.node(others[0]).raft.metrics().borrow_watched().clone();
        m.current_leader.filter(|l| others.contains(l))
    })
    .await?;
    let majority = Client::new(ClientConfig::new(others.iter().map(|id| cluster.client_addr(*id))))?;
    let written = majority.put("k", "after").await?;
    let new_term = cluster.node(new).raft.metrics().borrow_watched().current_term;

    cluster.heal_links();
    wait::until(T, "the old leader to follow the new one", || async {
        let m = cluster.node(old).raft.metrics().borrow_watched().clone();
        (m.current_leader == Some(new) && cluster.revision(old) >= written.revision).then_some(())
    })
    .await?;
    assert_eq!(cluster.wait_for_leader(T).await?, new);
    assert!(
        terms(&cluster).iter().all(|(_, t)| *t == new_term),
        "the old leader campaigned after the heal: terms {:?}, new leader's term {new_term}",
        terms(&cluster)
    );
    cluster.shutdown().await;
    Ok(())
}
