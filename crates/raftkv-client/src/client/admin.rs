//! Admin calls: membership changes and listing, one node's Status and the whole cluster's
//! ([`NodeReport`]), snapshots and backups. The membership calls go through the retry loop to
//! the leader; the others are one-shot calls to a named node.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::{
    AddMemberRequest, BackupChunk, BackupRequest, ListMembersRequest, MembersResponse, PromoteMemberRequest,
    RemoveMemberRequest, Role, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, TransferLeaderRequest,
    TransferLeaderResponse,
};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::call::CallKind;
use super::{Client, EndpointReport, MAX_REPLY_BYTES};
use crate::error::ClientError;

/// What the client knows of one node, as [`Client::cluster_status`] reports it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node's id, when it answered or is listed in the membership.
    pub id: Option<u64>,
    /// The client address the report is for.
    pub addr: String,
    /// Its status, or why it could not be had.
    pub status: Result<StatusResponse, String>,
    /// How long the Status call took.
    pub latency: Option<Duration>,
    /// The client's view of the endpoint (breaker, counters), if it is one of its endpoints.
    pub endpoint: Option<EndpointReport>,
}

/// Default deadline of membership, snapshot and backup calls (a learner may need a while to
/// catch up; a snapshot of a big state takes time to build).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(180);

impl Client {
    pub(super) async fn probe_all(
        &self,
        addrs: &[String],
        timeout: Duration,
    ) -> Vec<(String, Result<StatusResponse, String>, Option<Duration>)> {
        let probes = addrs.iter().map(|addr| {
            let addr = addr.clone();
            async move {
                let started = Instant::now();
                let result = self.status_of(&addr, timeout).await.map_err(|e| e.to_string());
                let latency = result.is_ok().then(|| started.elapsed());
                (addr, result, latency)
            }
        });
        futures::future::join_all(probes).await
    }

    /// The status of the node at `addr` (one attempt, no retries, no breaker).
    pub async fn status_of(&self, addr: &str, timeout: Duration) -> Result<StatusResponse, ClientError> {
        let channel = self.endpoint(addr)?.channel.clone();
        let mut request = self.request(StatusRequest {});
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, ClusterClient::new(channel).status(request)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == Code::Unavailable => Err(ClientError::Unavailable(s.message().to_string())),
            Ok(Err(s)) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                Err(ClientError::Unavailable(format!("no reply within {timeout:?}")))
            }
            Ok(Err(s)) => Err(ClientError::from_status(&s)),
            Err(_) => Err(ClientError::Unavailable(format!("no reply within {timeout:?}"))),
        }
    }

    /// The status of every node the client can learn of: its endpoints, plus every member they
    /// report. Nodes that do not answer are included with the reason.
    pub async fn cluster_status(&self) -> Vec<NodeReport> {
        let timeout = self.inner.config.timeout.min(Duration::from_secs(2));
        let addrs: Vec<String> = self.snapshot().iter().map(|e| e.spec.addr.clone()).collect();
        let mut results: BTreeMap<String, (Result<StatusResponse, String>, Option<Duration>)> = self
            .probe_all(&addrs, timeout)
            .await
            .into_iter()
            .map(|(a, s, l)| (a, (s, l)))
            .collect();
        // Members as reported by the answering node with the highest term.
        let members = results
            .values()
            .filter_map(|(r, _)| r.as_ref().ok())
            .max_by_key(|s| (s.term, s.role == Role::Leader as i32))
            .map(|s| s.members.clone())
            .unwrap_or_default();
        let missing: Vec<String> = members
            .iter()
            .map(|m| m.client_addr.clone())
            .filter(|a| !a.is_empty() && !results.contains_key(a))
            .collect();
        results.extend(
            self.probe_all(&missing, timeout)
                .await
                .into_iter()
                .map(|(a, s, l)| (a, (s, l))),
        );
        let views: BTreeMap<String, EndpointReport> =
            self.endpoints().into_iter().map(|e| (e.addr.clone(), e)).collect();
        let mut reports: Vec<NodeReport> = results
            .into_iter()
            .map(|(addr, (status, latency))| {
                let id = match &status {
                    Ok(s) => Some(s.id),
                    Err(_) => members.iter().find(|m| m.client_addr == addr).map(|m| m.id),
                };
                let endpoint = views.get(&addr).cloned();
                NodeReport {
                    id,
                    addr,
                    status,
                    latency,
                    endpoint,
                }
            })
            .collect();
        reports.sort_by_key(|r| (r.id.is_none(), r.id, r.addr.clone()));
        reports
    }

    /// Adds node `id` as a learner, waits until it has caught up, and promotes it to voter
    /// (unless `learner_only`). Sent to the leader; may take a while for a big catch-up.
    pub async fn add_member(
        &self,
        id: u64,
        client_addr: &str,
        peer_addr: &str,
        learner_only: bool,
        timeout: Option<Duration>,
    ) -> Result<MembersResponse, ClientError> {
        let req = AddMemberRequest {
            id,
            client_addr: client_addr.into(),
            peer_addr: peer_addr.into(),
            learner_only,
        };
        self.call(
            CallKind::Write,
            timeout.or(Some(MEMBERSHIP_TIMEOUT)),
            req,
            |ch, r| async move { ClusterClient::new(ch).add_member(r).await },
        )
        .await
    }

    /// Makes learner `id` a voter.
    pub async fn promote_member(&self, id: u64) -> Result<MembersResponse, ClientError> {
        self.call(
            CallKind::Write,
            Some(MEMBERSHIP_TIMEOUT),
            PromoteMemberRequest { id },
            |ch, r| async move { ClusterClient::new(ch).promote_member(r).await },
        )
        .await
    }

    /// Hands leadership to voter `to` (None: the most up-to-date follower); answers once the new
    /// leader leads. Sent to the leader.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<TransferLeaderResponse, ClientError> {
        self.call(
            CallKind::Write,
            Some(MEMBERSHIP_TIMEOUT),
            TransferLeaderRequest { to: to.unwrap_or(0) },
            |ch, r| async move { ClusterClient::new(ch).transfer_leader(r).await },
        )
        .await
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<MembersResponse, ClientError> {
        self.call(
            CallKind::Write,
            Some(MEMBERSHIP_TIMEOUT),
            RemoveMemberRequest { id },
            |ch, r| async move { ClusterClient::new(ch).remove_member(r).await },
        )
        .await
    }

    /// The members and their replication progress, as the leader sees them.
    pub async fn list_members(&self) -> Result<MembersResponse, ClientError> {
        self.call(CallKind::Write, None, ListMembersRequest {}, |ch, r| async move {
            ClusterClient::new(ch).list_members(r).await
        })
        .await
    }

    /// Builds a snapshot on the node at `addr` now.
    pub async fn snapshot_on(&self, addr: &str) -> Result<SnapshotResponse, ClientError> {
        let channel = self.endpoint(addr)?.channel.clone();
        let mut request = self.request(SnapshotRequest {});
        request.set_timeout(MEMBERSHIP_TIMEOUT);
        ClusterClient::new(channel)
            .snapshot(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| classify_single(addr, &s))
    }

    /// Streams a backup from the node at `addr` (the leader when `None`).
    pub async fn backup_from(&self, addr: Option<&str>) -> Result<tonic::Streaming<BackupChunk>, ClientError> {
        let addr = match addr {
            Some(a) => a.to_string(),
            None => match self.known_leader() {
                Some(l) => l,
                None => self
                    .discover_leader(Instant::now() + self.inner.config.timeout)
                    .await
                    .ok_or_else(|| ClientError::Unavailable("no leader to take the backup from".into()))?,
            },
        };
        let channel = self.endpoint(&addr)?.channel.clone();
        let mut request = self.request(BackupRequest {});
        request.set_timeout(MEMBERSHIP_TIMEOUT);
        ClusterClient::new(channel)
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .backup(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| classify_single(&addr, &s))
    }
}

/// The error of a one-shot call to a named node.
fn classify_single(addr: &str, s: &Status) -> ClientError {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            ClientError::Unavailable(format!("{addr}: {}", s.message()))
        }
        _ => ClientError::from_status(s),
    }
}
