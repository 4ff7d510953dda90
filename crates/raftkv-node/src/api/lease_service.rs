//! `raftkv.v1.Lease`: granting, keeping alive, revoking and inspecting leases.
//!
//! Grants and revokes are writes through the Raft log; keep-alives and time-to-live go to the
//! leader's [`LeaseKeeper`], which alone decides when a lease expires. Every call must reach the
//! leader: another node answers UNAVAILABLE with the leader hint, like a write, and a
//! keep-alive stream ends that way when its node stops leading, so the client finds the new
//! leader (which has given every lease a fresh TTL).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use raftkv_proto::v1::lease_server::Lease;
use raftkv_proto::v1::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, LeasesRequest, LeasesResponse,
};
use raftkv_store::command::{ClientSession, Command, Response as SmResponse};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::api::call::ApiCalls;
use crate::api::error::ApiError;
use crate::api::request::{invalid, session};
use crate::consensus::core::NodeCore;
use crate::consensus::lease_keeper::{LeaseKeeper, MAX_TTL_MS};
use crate::consensus::membership::require_leader;

/// Keep-alive answers a stream buffers for a client that does not read them.
const KEEP_ALIVE_BUFFER: usize = 64;

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

pub struct LeaseService {
    core: NodeCore,
    calls: ApiCalls,
    keeper: LeaseKeeper,
    min_ttl_ms: u64,
    /// Where lease ids come from when a grant names none (a seam: tests and a simulator can
    /// make ids predictable).
    new_id: fn() -> u64,
}

/// A random lease id: non-zero, below 2^63 (so it is a positive number in every language's
/// signed 64-bit integer, as etcd's lease ids are).
pub fn random_lease_id() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}

impl LeaseService {
    pub fn new(calls: ApiCalls, keeper: LeaseKeeper, min_ttl_ms: u64) -> Self {
        Self {
            core: calls.core().clone(),
            calls,
            keeper,
            min_ttl_ms,
            new_id: random_lease_id,
        }
    }

    fn validate_ttl(&self, ttl_ms: u64) -> Result<(), ApiError> {
        if ttl_ms < self.min_ttl_ms {
            return Err(invalid(format!(
                "a lease TTL of {ttl_ms} ms is below this cluster's minimum of {} ms (a few election timeouts, so a \
                 failover cannot outlast a lease that is kept alive); ask for at least {} ms",
                self.min_ttl_ms, self.min_ttl_ms
            )));
        }
        if ttl_ms > MAX_TTL_MS {
            return Err(invalid(format!(
                "a lease TTL of {ttl_ms} ms is over the maximum of {MAX_TTL_MS} ms (a year)"
            )));
        }
        Ok(())
    }

    /// Grants a lease. With an exactly-once `session`, a retried grant gets the first answer
    /// (the same lease) instead of a second lease.
    async fn grant(
        &self,
        r: LeaseGrantRequest,
        session: Option<ClientSession>,
    ) -> Result<LeaseGrantResponse, ApiError> {
        self.validate_ttl(r.ttl_ms)?;
        require_leader(&self.core)?;
        let mut attempts = 0;
        loop {
            let id = if r.id == 0 { (self.new_id)() } else { r.id };
            attempts += 1;
            let command = Command::LeaseGrant { id, ttl_ms: r.ttl_ms };
            match self.core.write(command, session).await {
                Ok(SmResponse::LeaseGranted { id, ttl_ms, .. }) => {
                    self.keeper.granted(&self.core, id, ttl_ms);
                    return Ok(LeaseGrantResponse {
                        header: Some(self.core.header()),
                        id,
                        ttl_ms,
                    });
                }
                // A picked id that happens to be taken: pick again.
                Err(ApiError::LeaseExists(_)) if r.id == 0 && session.is_none() && attempts < 3 => continue,
                Ok(other) => return Err(unexpected(other)),
                Err(e) => return Err(e),
            }
        }
    }

    async fn revoke(
        &self,
        r: LeaseRevokeRequest,
        session: Option<ClientSession>,
    ) -> Result<LeaseRevokeResponse, ApiError> {
        require_leader(&self.core)?;
        match self.core.write(Command::LeaseRevoke { id: r.id }, session).await? {
            SmResponse::LeaseRevoked { deleted, .. } => {
                self.keeper.forget(r.id);
                Ok(LeaseRevokeResponse {
                    header: Some(self.core.header()),
                    deleted,
                })
            }
            other => Err(unexpected(other)),
        }
    }
}

/// One keep-alive of lease `id`, as the answer the stream and the one-shot call both send.
fn keep_alive(keeper: &LeaseKeeper, core: &NodeCore, id: u64) -> Result<LeaseKeepAliveResponse, ApiError> {
    let ttl_ms = keeper.keep_alive(core, id)?;
    Ok(LeaseKeepAliveResponse {
        header: Some(core.header()),
        id,
        ttl_ms,
    })
}

fn unexpected(resp: SmResponse) -> ApiError {
    ApiError::Storage(format!("state machine gave an unexpected reply: {resp:?}"))
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type KeepAliveStream = KeepAliveStream;

    async fn grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        self.calls
            .serve("Grant", request, |request| async move {
                let session = session(request.metadata())?;
                Ok(Response::new(self.grant(request.into_inner(), session).await?))
            })
            .await
    }

    async fn revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.calls
            .serve("Revoke", request, |request| async move {
                let session = session(request.metadata())?;
                Ok(Response::new(self.revoke(request.into_inner(), session).await?))
            })
            .await
    }

    async fn keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        self.calls
            .serve("KeepAlive", request, |request| async move {
                require_leader(&self.core)?;
                let (tx, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
                let core = self.core.clone();
                let keeper = self.keeper.clone();
                let mut inbound = request.into_inner();
                tokio::spawn(async move {
                    while let Some(Ok(r)) = inbound.next().await {
                        let answer = match keep_alive(&keeper, &core, r.id) {
                            Ok(answer) => Ok(answer),
                            // The lease is gone: say so and serve the stream's other leases.
                            Err(ApiError::LeaseNotFound(id)) => Ok(LeaseKeepAliveResponse {
                                header: Some(core.header()),
                                id,
                                ttl_ms: 0,
                            }),
                            // Not the leader any more: end the stream with the leader hint.
                            Err(e) => Err(Status::from(e)),
                        };
                        let last = answer.is_err();
                        if tx.send(answer).await.is_err() || last {
                            return;
                        }
                    }
                });
                let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
                Ok(Response::new(Box::pin(stream) as KeepAliveStream))
            })
            .await
    }

    async fn keep_alive_once(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.calls
            .serve("KeepAliveOnce", request, |request| async move {
                Ok(Response::new(keep_alive(
                    &self.keeper,
                    &self.core,
                    request.into_inner().id,
                )?))
            })
            .await
    }

    async fn time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.calls
            .serve("TimeToLive", request, |request| async move {
                let r = request.into_inner();
                let (left, granted_ttl_ms) = self.keeper.time_to_live(&self.core, r.id)?;
                let keys = if r.keys {
                    self.core.store.reader().lease_keys(r.id).map_err(ApiError::from)?
                } else {
                    Vec::new()
                };
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header: Some(self.core.header()),
                    id: r.id,
                    ttl_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    granted_ttl_ms,
                    keys,
                }))
            })
            .await
    }

    async fn leases(&self, request: Request<LeasesRequest>) -> Result<Response<LeasesResponse>, Status> {
        self.calls
            .serve("Leases", request, |_request| async move {
                require_leader(&self.core)?;
                let leases = self.core.store.reader().leases().map_err(ApiError::from)?;
                Ok(Response::new(LeasesResponse {
                    header: Some(self.core.header()),
                    leases: leases
                        .into_iter()
                        .map(|l| LeaseStatus {
                            id: l.id,
                            granted_ttl_ms: l.ttl_ms,
                        })
                        .collect(),
                }))
            })
            .await
    }
}
