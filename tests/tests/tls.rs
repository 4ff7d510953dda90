//! TLS on both APIs: a cluster made with `raftkv certs` serves clients that present the right
//! certificates and refuses plaintext, strangers and certificates from another CA; a node whose
//! peer certificate the cluster's peer CA did not sign can neither replicate nor vote.

use openraft::async_runtime::WatchReceiver;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openraft::ServerState;
use raftkv_client::{ClientError, ClientTls};
use raftkv_node::NodeConfig;
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::{wait, workspace_binary};

const T: Duration = Duration::from_secs(10);

/// A fresh certificate set from `raftkv certs` in `dir`.
fn certs(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(workspace_binary("raftkv"))
        .args(["certs", "--dir"])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "raftkv certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir.to_path_buf())
}

/// Node `c.id` with TLS on both APIs from the set in `client_set` / `peer_set`, trusting
/// `peer_ca` for its peers.
fn use_tls(c: &mut NodeConfig, client_set: &Path, peer_set: &Path, peer_ca: &Path) {
    let id = c.id;
    c.tls_cert = Some(client_set.join(format!("node-{id}.pem")));
    c.tls_key = Some(client_set.join(format!("node-{id}-key.pem")));
    c.tls_client_ca = Some(client_set.join("ca.pem"));
    c.peer_tls_cert = Some(peer_set.join(format!("node-{id}-peer.pem")));
    c.peer_tls_key = Some(peer_set.join(format!("node-{id}-peer-key.pem")));
    c.peer_tls_ca = Some(peer_ca.to_path_buf());
}

fn tls(set: &Path, with_cert: Option<&Path>) -> ClientTls {
    let identity = with_cert.map(|d| (d.join("client.pem"), d.join("client-key.pem")));
    ClientTls::from_files(
        &set.join("ca.pem"),
        identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .expect("readable certificates")
}

/// - Three nodes with mutual TLS between peers elect a leader and replicate.
/// - A client with the cluster's CA and a client certificate it signed reads and writes.
/// - Refused: a plaintext client, a client presenting no certificate, and a client whose
///   certificate another CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_only_clients_with_its_certificates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ours = certs(&dir.path().join("ours"))?;
    let theirs = certs(&dir.path().join("theirs"))?;
    let cluster = InProcessCluster::start_with(3, |c| use_tls(c, &ours, &ours, &ours.join("peer-ca.pem"))).await?;
    cluster.wait_for_leader(T).await?;

    let client = cluster.client_with(|c| c.tls = Some(tls(&ours, Some(&ours))));
    let put = client.put("k", "over tls").await?;
    cluster.wait_revision(put.revision, T).await?;
    assert_eq!(client.get("k").await?.kv.map(|kv| kv.value), Some(b"over tls".to_vec()));

    let refused = |c: raftkv_client::Client| async move { c.get("k").await };
    let short = |c: &mut raftkv_client::ClientConfig| c.timeout = Duration::from_secs(1);
    let plaintext = refused(cluster.client_with(short)).await;
    let anonymous = refused(cluster.client_with(|c| {
        short(c);
        c.tls = Some(tls(&ours, None));
    }))
    .await;
    let stranger = refused(cluster.client_with(|c| {
        short(c);
        c.tls = Some(tls(&ours, Some(&theirs)));
    }))
    .await;
    for (who, result) in [
        ("plaintext", plaintext),
        ("no certificate", anonymous),
        ("another CA", stranger),
    ] {
        assert!(
            matches!(result, Err(ClientError::Unavailable(_))),
            "{who}: expected the connection to be refused, got {result:?}"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// - Node 3's peer certificate comes from another CA. Nodes 1 and 2 elect a leader and commit
///   writes; node 3 never gets an entry (the leader has no acknowledgement from it) and never
///   leads: without a certificate from the peer CA it can neither replicate nor vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_peer_certificate_from_the_cluster_ca_cannot_replicate_or_vote() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ours = certs(&dir.path().join("ours"))?;
    let theirs = certs(&dir.path().join("theirs"))?;
    let peer_ca = ours.join("peer-ca.pem");
    let cluster = InProcessCluster::start_with(3, |c| {
        let peer_set = if c.id == 3 { theirs.clone() } else { ours.clone() };
        use_tls(c, &ours, &peer_set, &peer_ca)
    })
    .await?;

    let leader = wait::until(T, "nodes 1 and 2 to agree on a leader among them", || async {
        let l1 = cluster.node(1).raft.metrics().borrow_watched().current_leader?;
        let l2 = cluster.node(2).raft.metrics().borrow_watched().current_leader?;
        let leading = cluster.node(l1).raft.metrics().borrow_watched().state == ServerState::Leader;
        (l1 == l2 && l1 != 3 && leading).then_some(l1)
    })
    .await?;
    let client = cluster.client_with(|c| c.tls = Some(tls(&ours, Some(&ours))));
    let put = client.put("k", "v").await?;
    for id in [1, 2] {
        wait::until(T, &format!("node {id} to hold the write"), || async {
            (cluster.revision(id) >= put.revision).then_some(())
        })
        .await?;
    }

    let metrics = cluster.node(leader).raft.metrics().borrow_watched().clone();
    let matched_3 = metrics.replication.as_ref().and_then(|r| r.get(&3).cloned()).flatten();
    assert_eq!(matched_3, None, "the leader never had an entry acknowledged by node 3");
    assert_eq!(cluster.applied_index(3), 0, "node 3 holds nothing");
    let node3 = cluster.node(3).raft.metrics().borrow_watched().clone();
    assert_ne!(node3.state, ServerState::Leader);
    assert_ne!(node3.current_leader, Some(3));
    cluster.shutdown().await;
    Ok(())
}
