//! `etcdserverpb.Lease` on the etcd port: grant, revoke, keep-alive (the stream), time-to-live
//! and list, over the native Lease service (so expiry stays the leader's `LeaseKeeper`'s).
//!
//! etcd counts TTLs in seconds and raises a TTL below its minimum to the minimum; so does this
//! port (the minimum being raftkv's, max(1 s, 5 × election timeout), rounded up to a second).
//! Lease calls must reach the leader; on a follower they are passed on to the leader's native
//! API.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use raftkv_proto::etcd::etcdserverpb::lease_server::Lease as EtcdLeaseApi;
use raftkv_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use raftkv_proto::v1 as native;
use raftkv_proto::v1::lease_client::LeaseClient;
use raftkv_proto::v1::lease_server::Lease;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::lease_service::LeaseService;
use crate::etcd::convert::{self, message, non_negative};
use crate::etcd::forward::{here_or_on_leader, LeaderForwarder};

/// etcd's message for a grant of an id in use.
const LEASE_EXISTS: &str = "etcdserver: lease already exists";

/// Cheap to clone (the keep-alive stream holds one).
#[derive(Clone)]
pub struct EtcdLease {
    native: Arc<LeaseService>,
    forwarder: Arc<LeaderForwarder>,
    /// The shortest TTL granted, in whole seconds.
    min_ttl_secs: i64,
}

impl EtcdLease {
    pub fn new(native: LeaseService, forwarder: Arc<LeaderForwarder>, min_ttl_ms: u64) -> Self {
        Self {
            native: Arc::new(native),
            forwarder,
            min_ttl_secs: i64::try_from(min_ttl_ms.div_ceil(1000)).unwrap_or(i64::MAX),
        }
    }
}

fn secs(ms: u64) -> i64 {
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

fn etcd_status(s: Status) -> Status {
    match s.code() {
        Code::NotFound => Status::not_found(message::LEASE_NOT_FOUND),
        Code::AlreadyExists => Status::failed_precondition(LEASE_EXISTS),
        _ => s,
    }
}

impl EtcdLease {
    async fn keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let req = native::LeaseKeepAliveRequest {
            id: non_negative("lease ID", id)?,
        };
        match here_or_on_leader!(self.forwarder, self.native, LeaseClient, keep_alive_once, req) {
            Ok(r) => Ok(LeaseKeepAliveResponse {
                header: convert::header(r.header),
                id,
                ttl: secs(r.ttl_ms),
            }),
            // etcd answers a keep-alive of a lease that is gone with TTL 0.
            Err(s) if s.code() == Code::NotFound => Ok(LeaseKeepAliveResponse {
                header: None,
                id,
                ttl: 0,
            }),
            Err(s) => Err(s),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EtcdLeaseApi for EtcdLease {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        let ttl = r.ttl.max(self.min_ttl_secs);
        let req = native::LeaseGrantRequest {
            ttl_ms: non_negative("TTL", ttl)?.saturating_mul(1000),
            id: non_negative("lease ID", r.id)?,
        };
        let granted = here_or_on_leader!(self.forwarder, self.native, LeaseClient, grant, req).map_err(etcd_status)?;
        Ok(Response::new(LeaseGrantResponse {
            header: convert::header(granted.header),
            id: convert::revision(granted.id),
            ttl: secs(granted.ttl_ms),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = native::LeaseRevokeRequest {
            id: non_negative("lease ID", request.into_inner().id)?,
        };
        let revoked = here_or_on_leader!(self.forwarder, self.native, LeaseClient, revoke, req).map_err(etcd_status)?;
        Ok(Response::new(LeaseRevokeResponse {
            header: convert::header(revoked.header),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let this = self.clone();
        let replies = request.into_inner().then(move |message| {
            let this = this.clone();
            async move {
                match message {
                    Ok(m) => this.keep_alive_once(m.id).await,
                    Err(e) => Err(e),
                }
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let req = native::LeaseTimeToLiveRequest {
            id: non_negative("lease ID", r.id)?,
            keys: r.keys,
        };
        match here_or_on_leader!(self.forwarder, self.native, LeaseClient, time_to_live, req) {
            Ok(t) => Ok(Response::new(LeaseTimeToLiveResponse {
                header: convert::header(t.header),
                id: r.id,
                ttl: i64::try_from(t.ttl_ms / 1000).unwrap_or(i64::MAX),
                granted_ttl: secs(t.granted_ttl_ms),
                keys: t.keys,
            })),
            // etcd answers a lease that is gone with TTL -1.
            Err(s) if s.code() == Code::NotFound => Ok(Response::new(LeaseTimeToLiveResponse {
                header: None,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(s) => Err(s),
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let listed = here_or_on_leader!(
            self.forwarder,
            self.native,
            LeaseClient,
            leases,
            native::LeasesRequest {}
        )?;
        Ok(Response::new(LeaseLeasesResponse {
            header: convert::header(listed.header),
            leases: listed
                .leases
                .into_iter()
                .map(|l| LeaseStatus {
                    id: convert::revision(l.id),
                })
                .collect(),
        }))
    }
}
