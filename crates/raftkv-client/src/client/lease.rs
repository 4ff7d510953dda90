//! Lease calls ([`Client::lease_grant`], keep-alive, revoke, time-to-live, list, leased puts)
//! and [`LeaseKeepAlive`], a lease kept alive in the background for as long as it is held.
//!
//! Grants and revokes are numbered writes (a retried grant gets the same lease, never a
//! second one); keep-alives and time-to-live go to the leader and are safe to repeat, so they
//! are retried through failovers like any call. The leader decides expiry: a new leader gives
//! every lease a fresh TTL, so a keep-alive that finds the new leader within the TTL keeps the
//! lease.

use std::time::Duration;

use raftkv_proto::v1::lease_client::LeaseClient;
use raftkv_proto::v1::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, LeasesRequest, PutRequest,
    PutResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::call::CallKind;
use super::Client;
use crate::error::ClientError;

/// The shortest interval between two keep-alives of one lease.
const MIN_KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(100);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// Grants a lease with time-to-live `ttl`; the leader picks its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrantResponse, ClientError> {
        self.lease_grant_with_id(0, ttl).await
    }

    /// Grants lease `id` (0: the leader picks one). `AlreadyExists` when the id is in use.
    pub async fn lease_grant_with_id(&self, id: u64, ttl: Duration) -> Result<LeaseGrantResponse, ClientError> {
        let req = LeaseGrantRequest {
            ttl_ms: millis(ttl),
            id,
        };
        self.call(CallKind::Write, None, req, |ch, r| async move {
            LeaseClient::new(ch).grant(r).await
        })
        .await
    }

    /// Revokes lease `id`, deleting its keys. `NotFound` when it is already gone.
    pub async fn lease_revoke(&self, id: u64) -> Result<LeaseRevokeResponse, ClientError> {
        self.call(CallKind::Write, None, LeaseRevokeRequest { id }, |ch, r| async move {
            LeaseClient::new(ch).revoke(r).await
        })
        .await
    }

    /// Revokes lease `id` when giving it up: a lease that is already gone (expired, revoked)
    /// is what was wanted, not an error.
    pub(crate) async fn release_lease(&self, id: u64) -> Result<(), ClientError> {
        match self.lease_revoke(id).await {
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Restarts lease `id`'s TTL once. `NotFound` when the lease is gone.
    pub async fn lease_keep_alive_once(&self, id: u64) -> Result<LeaseKeepAliveResponse, ClientError> {
        self.lease_keep_alive_within(id, None).await
    }

    async fn lease_keep_alive_within(
        &self,
        id: u64,
        timeout: Option<Duration>,
    ) -> Result<LeaseKeepAliveResponse, ClientError> {
        self.call(
            CallKind::Leader,
            timeout,
            LeaseKeepAliveRequest { id },
            |ch, r| async move { LeaseClient::new(ch).keep_alive_once(r).await },
        )
        .await
    }

    /// What lease `id` has left, and (with `keys`) the keys attached to it.
    pub async fn lease_time_to_live(&self, id: u64, keys: bool) -> Result<LeaseTimeToLiveResponse, ClientError> {
        let req = LeaseTimeToLiveRequest { id, keys };
        self.call(CallKind::Leader, None, req, |ch, r| async move {
            LeaseClient::new(ch).time_to_live(r).await
        })
        .await
    }

    /// Every lease.
    pub async fn leases(&self) -> Result<Vec<LeaseStatus>, ClientError> {
        let reply = self
            .call(CallKind::Leader, None, LeasesRequest {}, |ch, r| async move {
                LeaseClient::new(ch).leases(r).await
            })
            .await?;
        Ok(reply.leases)
    }

    /// Sets `key` to `value`, attached to lease `lease`: the key goes when the lease does.
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: u64,
    ) -> Result<PutResponse, ClientError> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
            lease,
        };
        self.put_request(req, None).await
    }

    /// Keeps lease `id` (granted with `ttl`) alive in the background, a keep-alive every third
    /// of the TTL, until [`LeaseKeepAlive::stop`] or the handle is dropped. The lease is
    /// reported lost once the cluster says it is gone, or once no keep-alive has been
    /// confirmed for a whole TTL (the holder can no longer know it still holds it).
    pub fn keep_lease_alive(&self, id: u64, ttl: Duration) -> LeaseKeepAlive {
        let (state_tx, state) = watch::channel(LeaseState::Alive);
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(keep_alive_loop(self.clone(), id, ttl, state_tx, stop));
        LeaseKeepAlive {
            id,
            state,
            stop: stop_tx,
            task: Some(task),
        }
    }
}

/// How a kept-alive lease stands, as its holder can know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The last keep-alive was confirmed within the TTL.
    Alive,
    /// A keep-alive failed (a failover, a partition); retrying. The lease is still within the
    /// TTL of the last confirmed one.
    Unconfirmed,
    /// The lease is gone (the cluster said so) or could not be confirmed for a whole TTL.
    /// Final: keep-alives have stopped.
    Lost,
}

/// A lease kept alive in the background ([`Client::keep_lease_alive`]). Dropping it stops the
/// keep-alives (the lease then expires after its TTL, unless revoked).
pub struct LeaseKeepAlive {
    id: u64,
    state: watch::Receiver<LeaseState>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseKeepAlive {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How the lease stands now.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// A receiver of the lease's state: it sees each change of state, not each keep-alive.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        let mut state = self.state.clone();
        let _ = state.wait_for(|s| *s == LeaseState::Lost).await;
    }

    /// Stops the keep-alives (the lease is not revoked: revoke it to delete its keys now).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseKeepAlive {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Moves the lease to `new`, waking subscribers only on a change of state (not on every
/// confirmed keep-alive).
fn set_state(state: &watch::Sender<LeaseState>, new: LeaseState) {
    state.send_if_modified(|s| std::mem::replace(s, new) != new);
}

async fn keep_alive_loop(
    client: Client,
    id: u64,
    ttl: Duration,
    state: watch::Sender<LeaseState>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = (ttl / 3).max(MIN_KEEP_ALIVE_INTERVAL);
    let mut confirmed_until = Instant::now() + ttl;
    let mut next = Instant::now() + interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let sent = Instant::now();
        // An attempt may use what is left of the TTL, but no more.
        let budget = confirmed_until
            .saturating_duration_since(sent)
            .max(MIN_KEEP_ALIVE_INTERVAL);
        let outcome = tokio::select! {
            r = client.lease_keep_alive_within(id, Some(budget)) => r,
            _ = stop.changed() => return,
        };
        match outcome {
            Ok(reply) if reply.ttl_ms > 0 => {
                confirmed_until = sent + Duration::from_millis(reply.ttl_ms);
                set_state(&state, LeaseState::Alive);
                next = sent + interval;
            }
            Ok(_) | Err(ClientError::NotFound(_)) => {
                tracing::warn!(lease = format!("{id:x}"), "lease lost: the cluster no longer has it");
                set_state(&state, LeaseState::Lost);
                return;
            }
            Err(e) => {
                if Instant::now() >= confirmed_until {
                    tracing::warn!(
                        lease = format!("{id:x}"),
                        "lease lost: no keep-alive confirmed for a whole TTL ({e})"
                    );
                    set_state(&state, LeaseState::Lost);
                    return;
                }
                tracing::debug!(lease = format!("{id:x}"), "keep-alive failed, retrying: {e}");
                set_state(&state, LeaseState::Unconfirmed);
                next = Instant::now() + MIN_KEEP_ALIVE_INTERVAL;
            }
        }
    }
}
