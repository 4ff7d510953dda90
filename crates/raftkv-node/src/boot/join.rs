//! Joining an existing cluster (`raftkvd --join ADDR,...`): a pristine node asks the cluster to
//! add it, through any member (following the leader hint), until it is a voter.
//!
//! The leader adds it as a learner, waits until it has caught up (by log or snapshot) and
//! promotes it by joint consensus. Refusals that retrying cannot fix (a reused id, addresses
//! that clash with a member's) end the node with the reason.

use std::time::Duration;

use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::AddMemberRequest;
use raftkv_proto::{error_kind, metadata};
use raftkv_store::{NodeAddr, NodeId};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::Code;

/// One add call may take this long (the learner catches up during it).
const ADD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to keep trying to reach the cluster.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// Asks the cluster at `targets` to add node `id` at `addr` (with `token`, an admin token, when
/// the cluster requires one); reports a refusal on `fatal`.
pub async fn join(
    id: NodeId,
    addr: NodeAddr,
    targets: Vec<String>,
    token: Option<String>,
    tls: Option<ClientTlsConfig>,
    fatal: watch::Sender<Option<String>>,
) {
    let authorization = match token.map(|t| MetadataValue::try_from(metadata::bearer(&t))) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            let _ = fatal.send(Some(
                "--join-token is not valid gRPC metadata (printable ASCII only)".into(),
            ));
            return;
        }
    };
    let give_up = tokio::time::Instant::now() + GIVE_UP_AFTER;
    let mut queue: Vec<String> = targets.clone();
    let mut pause = Duration::from_millis(200);
    loop {
        let target = if queue.is_empty() {
            queue = targets.clone();
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            continue;
        } else {
            queue.remove(0)
        };
        if tokio::time::Instant::now() >= give_up {
            let _ = fatal.send(Some(format!(
                "could not join the cluster at {} within {GIVE_UP_AFTER:?}",
                targets.join(",")
            )));
            return;
        }
        let Ok(mut endpoint) = Endpoint::from_shared(crate::consensus::transport::url(&target, tls.is_some())) else {
            continue;
        };
        if let Some(tls) = &tls {
            match endpoint.tls_config(tls.clone()) {
                Ok(e) => endpoint = e,
                Err(e) => {
                    let _ = fatal.send(Some(format!("TLS for --join: {e}")));
                    return;
                }
            }
        }
        let mut client = ClusterClient::new(endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy());
        let mut request = tonic::Request::new(AddMemberRequest {
            id,
            client_addr: addr.client_addr.clone(),
            peer_addr: addr.peer_addr.clone(),
            learner_only: false,
        });
        request.set_timeout(ADD_TIMEOUT);
        if let Some(auth) = &authorization {
            request.metadata_mut().insert(metadata::AUTHORIZATION, auth.clone());
        }
        tracing::info!(via = %target, "asking the cluster to add this node");
        match client.add_member(request).await {
            Ok(_) => {
                tracing::info!(id, "the cluster added this node");
                return;
            }
            Err(status) => {
                let md = status.metadata();
                let kind = md.get(metadata::ERROR_KIND).and_then(|v| v.to_str().ok());
                if kind == Some(error_kind::NOT_LEADER) {
                    if let Some(leader) = md.get(metadata::LEADER_ADDR).and_then(|v| v.to_str().ok()) {
                        queue.insert(0, leader.to_string());
                        continue;
                    }
                }
                if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) {
                    let _ = fatal.send(Some(format!(
                        "the cluster requires an admin token to add this node (--join-token / RAFTKV_JOIN_TOKEN): {}",
                        status.message()
                    )));
                    return;
                }
                if matches!(status.code(), Code::FailedPrecondition | Code::InvalidArgument) && kind.is_none() {
                    let _ = fatal.send(Some(format!(
                        "the cluster refused to add this node: {}",
                        status.message()
                    )));
                    return;
                }
                tracing::info!(via = %target, "join attempt failed ({}); retrying", status.message());
            }
        }
    }
}
