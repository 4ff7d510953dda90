//! `etcdserverpb.Maintenance` and `etcdserverpb.Cluster` on the etcd port: Status, Alarm,
//! Defragment, MoveLeader, Snapshot (a raftkv backup file), MemberList, MemberAdd (an unstarted
//! member, as etcd registers one), MemberRemove and MemberPromote, answered by the native Cluster service (membership changes passed on to the
//! leader); the rest refused with `UNIMPLEMENTED` naming it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use raftkv_proto::backup::{self, BackupError, BackupWriter};
use raftkv_proto::etcd::etcdserverpb::cluster_server::Cluster as EtcdCluster;
use raftkv_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use raftkv_proto::etcd::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, Member,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest as EtcdStatusRequest,
    StatusResponse as EtcdStatusResponse,
};
use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::cluster_server::Cluster;
use raftkv_proto::v1::{
    backup_chunk, AddMemberRequest, BackupRequest, ListMembersRequest, MemberInfo, PromoteMemberRequest,
    RemoveMemberRequest, Role, StatusRequest, StatusResponse, TransferLeaderRequest,
};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::api::cluster_service::ClusterService;
use crate::etcd::convert;
use crate::etcd::forward::{here_or_on_leader, LeaderForwarder};

/// The etcd API version raftkv's etcd port speaks (what `etcdctl endpoint status` shows).
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Bytes per message of the Snapshot stream (etcd sends 32 KiB).
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// How long MemberList waits for another member to say where its etcd port is.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// etcd's Maintenance and Cluster services over the native Cluster service.
pub struct EtcdMaintenance {
    native: ClusterService,
    etcd_addr: String,
    forwarder: Arc<LeaderForwarder>,
}

impl EtcdMaintenance {
    pub fn new(native: ClusterService, etcd_addr: String, forwarder: Arc<LeaderForwarder>) -> Self {
        Self {
            native,
            etcd_addr,
            forwarder,
        }
    }

    /// raftkv's members as etcd's, each with its etcd address as client URL.
    async fn etcd_members(&self, listed: Vec<MemberInfo>) -> Result<Vec<Member>, Status> {
        let me = self.status().await?.id;
        let mut members = Vec::with_capacity(listed.len());
        for m in listed {
            let unstarted = m.client_addr.is_empty();
            let etcd_addr = if m.id == me {
                self.etcd_addr.clone()
            } else if unstarted {
                String::new()
            } else {
                etcd_addr_of(&m.client_addr).await
            };
            members.push(Member {
                id: m.id,
                // etcd's unstarted members have no name (etcdctl prints them "unstarted").
                name: if unstarted {
                    String::new()
                } else {
                    format!("node{}", m.id)
                },
                peer_ur_ls: vec![url(&m.peer_addr)],
                client_ur_ls: if etcd_addr.is_empty() {
                    Vec::new()
                } else {
                    vec![url(&etcd_addr)]
                },
                is_learner: !m.voter,
            });
        }
        Ok(members)
    }

    /// A whole backup file of this node's state, from the native Backup stream, padded so
    /// that etcdctl's `snapshot save` accepts its length.
    async fn backup_file(&self) -> Result<Vec<u8>, Status> {
        let mut chunks = self.native.backup(Request::new(BackupRequest {})).await?.into_inner();
        let (mut meta, mut data) = (None, Vec::new());
        while let Some(chunk) = chunks.next().await {
            match (chunk?.chunk, meta.is_some()) {
                (Some(backup_chunk::Chunk::Meta(m)), false) => meta = Some(m),
                (Some(backup_chunk::Chunk::Data(d)), true) => data.extend_from_slice(&d),
                _ => {
                    return Err(Status::internal(
                        "the node's backup stream did not start with its metadata",
                    ))
                }
            }
        }
        let mut meta = meta.ok_or_else(|| Status::internal("the node's backup stream was empty"))?;
        let broken = |e: BackupError| Status::internal(format!("building the snapshot failed: {e}"));
        // bbolt files are whole 512-byte pages and etcd appends a SHA-256: etcdctl refuses a
        // snapshot whose length is not 32 more than a multiple of 512.
        while backup::file_len(&meta) % 512 != 32 {
            meta.padding.push(0);
        }
        let mut writer = BackupWriter::new(Vec::new(), &meta).map_err(broken)?;
        writer.write_data(&data).map_err(broken)?;
        writer.finish().map_err(broken)
    }

    async fn status(&self) -> Result<StatusResponse, Status> {
        Ok(self.native.status(Request::new(StatusRequest {})).await?.into_inner())
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "raftkv's etcd API does not support {what} (see docs/etcd-compat.md)"
    ))
}

fn url(addr: &str) -> String {
    format!("http://{addr}")
}

/// HOST:PORT from a peer URL as etcd takes it (`http://HOST:PORT`).
fn peer_addr_of(peer_url: &str) -> Result<String, Status> {
    let rest = peer_url
        .strip_prefix("http://")
        .or_else(|| peer_url.strip_prefix("https://"))
        .unwrap_or(peer_url);
    let addr = rest.strip_suffix('/').unwrap_or(rest);
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() => {
            Ok(addr.to_string())
        }
        _ => Err(Status::invalid_argument(format!(
            "etcdserver: peer URL {peer_url:?} is not http://HOST:PORT"
        ))),
    }
}

/// Another member's etcd address, from its native Status (empty when it cannot be had).
async fn etcd_addr_of(client_addr: &str) -> String {
    let Ok(endpoint) = Endpoint::from_shared(url(client_addr)) else {
        return String::new();
    };
    let endpoint = endpoint
        .connect_timeout(PEER_STATUS_TIMEOUT)
        .timeout(PEER_STATUS_TIMEOUT);
    match ClusterClient::new(endpoint.connect_lazy())
        .status(StatusRequest {})
        .await
    {
        Ok(r) => r.into_inner().etcd_addr,
        Err(_) => String::new(),
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdMaintenance {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = request.into_inner();
        if r.action != alarm_request::AlarmAction::Get as i32 {
            return Err(unimplemented(
                "activating or clearing alarms (raftkv raises and clears its disk-space alarm itself)",
            ));
        }
        let status = self.status().await?;
        let alarms = if status.disk_space_alarm {
            vec![AlarmMember {
                member_id: status.id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(AlarmResponse {
            header: convert::header(status.header),
            alarms,
        }))
    }

    async fn status(&self, _request: Request<EtcdStatusRequest>) -> Result<Response<EtcdStatusResponse>, Status> {
        let s = self.status().await?;
        let mut errors = Vec::new();
        if s.disk_space_alarm {
            errors.push("memberID:{} alarm:NOSPACE".replace("{}", &s.id.to_string()));
        }
        let db_size = i64::try_from(s.db_size_bytes).unwrap_or(i64::MAX);
        Ok(Response::new(EtcdStatusResponse {
            header: convert::header(s.header),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: s.leader_id,
            raft_index: s.committed_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors,
            db_size_in_use: db_size,
            is_learner: s.role == Role::Learner as i32,
        }))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        // Nothing to do: the state machine reclaims space as it goes. Answered as done, and
        // logged, so scripts that defragment on a schedule keep working.
        tracing::info!("etcd Defragment: nothing to do, raftkv's storage needs no defragmentation");
        let s = self.status().await?;
        Ok(Response::new(DefragmentResponse {
            header: convert::header(s.header),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(unimplemented("HashKV"))
    }

    type SnapshotStream = futures::stream::Iter<std::vec::IntoIter<Result<SnapshotResponse, Status>>>;

    /// The stream carries a raftkv backup file, byte for byte what `raftkv backup` writes
    /// (header, snapshot, SHA-256): `etcdctl snapshot save FILE` makes a file that
    /// `raftkvd restore --from FILE` takes. It is not a bbolt database, so etcd's own
    /// `snapshot status` / `snapshot restore` cannot read it (docs/etcd-compat.md).
    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let file = self.backup_file().await?;
        let header = convert::header(self.status().await?.header);
        let total = file.len();
        let chunks: Vec<_> = file
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .enumerate()
            .map(|(i, chunk)| {
                let sent = (i * SNAPSHOT_CHUNK_BYTES + chunk.len()) as u64;
                Ok(SnapshotResponse {
                    header: if i == 0 { header } else { None },
                    remaining_bytes: total as u64 - sent,
                    blob: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(chunks)))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        // etcd's own rule: the request must reach the leader (etcdctl move-leader finds it).
        let to = request.into_inner().target_id;
        if to == 0 {
            return Err(Status::invalid_argument(
                "etcdserver: bad leader transferee (target ID 0)",
            ));
        }
        let moved = self
            .native
            .transfer_leader(Request::new(TransferLeaderRequest { to }))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable => Status::failed_precondition("etcdserver: not leader"),
                _ => s,
            })?
            .into_inner();
        Ok(Response::new(MoveLeaderResponse {
            header: convert::header(moved.header),
        }))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}

#[tonic::async_trait]
impl EtcdCluster for EtcdMaintenance {
    async fn member_list(&self, _request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let listed = self
            .native
            .list_members(Request::new(ListMembersRequest {}))
            .await?
            .into_inner();
        let members = self.etcd_members(listed.members).await?;
        Ok(Response::new(MemberListResponse {
            header: convert::header(listed.header),
            members,
        }))
    }

    /// etcd's MemberAdd registers a member that has not started: only its peer URL is known.
    /// raftkv picks the next unused id; the node is then started with that id and `--join`,
    /// which publishes its client address (until then MemberList shows it unstarted).
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let r = request.into_inner();
        let peer_addr = match r.peer_ur_ls.as_slice() {
            [one] => peer_addr_of(one)?,
            [] => return Err(Status::invalid_argument("etcdserver: member peer URL is required")),
            _ => return Err(unimplemented("more than one peer URL per member")),
        };
        let added = here_or_on_leader!(
            self.forwarder,
            self.native,
            ClusterClient,
            add_member,
            AddMemberRequest {
                id: 0,
                client_addr: String::new(),
                peer_addr: peer_addr.clone(),
                learner_only: r.is_learner,
            }
        )?;
        let members = self.etcd_members(added.members).await?;
        let member = members.iter().find(|m| m.peer_ur_ls == [url(&peer_addr)]).cloned();
        Ok(Response::new(MemberAddResponse {
            header: convert::header(added.header),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let removed = here_or_on_leader!(
            self.forwarder,
            self.native,
            ClusterClient,
            remove_member,
            RemoveMemberRequest { id }
        )?;
        Ok(Response::new(MemberRemoveResponse {
            header: convert::header(removed.header),
            members: self.etcd_members(removed.members).await?,
        }))
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let promoted = here_or_on_leader!(
            self.forwarder,
            self.native,
            ClusterClient,
            promote_member,
            PromoteMemberRequest { id }
        )?;
        Ok(Response::new(MemberPromoteResponse {
            header: convert::header(promoted.header),
            members: self.etcd_members(promoted.members).await?,
        }))
    }
}
