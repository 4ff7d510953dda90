//! Seeing the cluster: Prometheus metrics move as the cluster does, health follows a node's
//! ability to serve, and reflection lists the API.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::prometheus::{self, http_get};
use raftkv_tests::wait;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const T: Duration = Duration::from_secs(10);

async fn channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

async fn with_metrics() -> anyhow::Result<InProcessCluster> {
    InProcessCluster::start_with(3, |c| c.metrics_addr = Some("127.0.0.1:0".parse().expect("addr"))).await
}

async fn scrape(cluster: &InProcessCluster, id: u64) -> anyhow::Result<BTreeMap<String, f64>> {
    prometheus::scrape(cluster.node(id).metrics_addr.expect("metrics enabled")).await
}

fn value(samples: &BTreeMap<String, f64>, name: &str, id: u64) -> f64 {
    let key = format!("raftkv_{name}{{node=\"{id}\"}}");
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("{key} missing from {:?}", samples.keys()))
}

/// - /metrics parses as Prometheus text; the applied index grows with writes; request counts
///   and read-index counters move; the leader reports replication lag per follower.
/// - After the leader stops, a survivor's leader_changes_total has grown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_cluster() -> anyhow::Result<()> {
    let mut cluster = with_metrics().await?;
    let leader = cluster.wait_for_leader(T).await?;
    let survivor = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let before = scrape(&cluster, leader).await?;
    let client = cluster.client();
    for i in 0..20 {
        client.put(format!("k{i}"), "v").await?;
        client.get(format!("k{i}")).await?;
    }
    let after = scrape(&cluster, leader).await?;
    assert!(value(&after, "applied_index", leader) >= value(&before, "applied_index", leader) + 20.0);
    assert_eq!(after[&format!("raftkv_role{{role=\"leader\",node=\"{leader}\"}}")], 1.0);
    assert_eq!(
        after[&format!("raftkv_role{{role=\"follower\",node=\"{leader}\"}}")],
        0.0
    );
    let puts = after
        .iter()
        .filter(|(k, _)| k.contains("requests_total") && k.contains("rpc=\"Put\"") && k.contains("code=\"Ok\""))
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!(puts >= 20.0, "Put requests counted: {puts}");
    assert!(after
        .keys()
        .any(|k| k.starts_with("raftkv_replication_lag_entries{") && k.contains("follower=")));
    assert!(after
        .keys()
        .any(|k| k.starts_with("raftkv_fsync_duration_seconds_count")));
    assert!(value(&after, "applied_entries_total", leader) >= 20.0);

    let changes_before = value(&scrape(&cluster, survivor).await?, "leader_changes_total", survivor);
    cluster.stop(leader).await;
    cluster.wait_for_leader(T).await?;
    let changes_after = value(&scrape(&cluster, survivor).await?, "leader_changes_total", survivor);
    assert!(changes_after > changes_before, "{changes_before} -> {changes_after}");
    cluster.shutdown().await;
    Ok(())
}

/// - A follower cut off from the others turns NOT_SERVING (gRPC health and /readyz); once the
///   links heal and it catches up it is SERVING again. /healthz stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_ability_to_serve() -> anyhow::Result<()> {
    let cluster = with_metrics().await?;
    let leader = cluster.wait_for_leader(T).await?;
    let cut = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let health = HealthClient::new(channel(&cluster.client_addr(cut)).await?);
    let status = |h: &HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "raftkv.v1.KV".into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
        }
    };
    wait::until(T, "SERVING", || async {
        (status(&health).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await?;
    let metrics = cluster.node(cut).metrics_addr.expect("metrics");
    assert_eq!(http_get(metrics, "/readyz").await?.0, 200);

    cluster.isolate(cut);
    wait::until(T, "NOT_SERVING while cut off", || async {
        (status(&health).await? == ServingStatus::NotServing as i32).then_some(())
    })
    .await?;
    let (code, body) = http_get(metrics, "/readyz").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(http_get(metrics, "/healthz").await?.0, 200, "alive all the same");

    // Writes continue on the majority meanwhile.
    let majority: Vec<String> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != cut)
        .map(|id| cluster.client_addr(id))
        .collect();
    let client = raftkv_client::Client::new(raftkv_client::ClientConfig::new(majority))?;
    client.put("while-cut", "x").await?;

    cluster.heal_links();
    wait::until(T, "SERVING again after healing", || async {
        (status(&health).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await?;
    assert_eq!(http_get(metrics, "/readyz").await?.0, 200);
    cluster.shutdown().await;
    Ok(())
}

/// - Server reflection lists the public services (and not the internal peer API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_services() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let mut client = ServerReflectionClient::new(channel(&cluster.client_addr(1)).await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let reply = replies.message().await?.expect("a reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        anyhow::bail!("unexpected reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["raftkv.v1.KV", "raftkv.v1.Cluster", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("RaftPeer")), "{names:?}");
    cluster.shutdown().await;
    Ok(())
}
