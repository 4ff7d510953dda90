//! `LockGuard`: a distributed lock held through a lease, with a fencing token.
//!
//! [`Client::lock`] grants a lease, joins the lock's queue (`locks/NAME/<lease id>`), keeps the
//! lease alive and waits for its turn. The token is the lock key's create revision: every
//! later holder's token is higher, because its key was created later. A holder that stalls
//! (a GC pause, a partition) may still believe it holds the lock after its lease expired and
//! the next holder took over; writes it guards with [`LockGuard::guard`] then fail their
//! compare instead of overwriting the new holder's work.

use std::time::Duration;

use raftkv_proto::v1::{Compare, TxnOp, TxnRequest, TxnResponse};
use tokio::sync::watch;

use super::queue::{self, Place};
use super::LOCK_PREFIX;
use crate::client::{Client, LeaseKeepAlive, LeaseState};
use crate::error::ClientError;
use crate::txn::{self, Op};

/// Revokes a lease when dropped, unless disarmed: a contender that gives up (or a guard that
/// is dropped) leaves the queue at once rather than after its TTL.
pub(super) struct RevokeOnDrop {
    client: Client,
    lease: Option<u64>,
}

impl RevokeOnDrop {
    pub(super) fn new(client: &Client, lease: u64) -> Self {
        Self {
            client: client.clone(),
            lease: Some(lease),
        }
    }

    /// Revokes now; a lease that is already gone is not an error.
    pub(super) async fn revoke(mut self) -> Result<(), ClientError> {
        let Some(lease) = self.lease.take() else { return Ok(()) };
        self.client.release_lease(lease).await
    }
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else { return };
        let client = self.client.clone();
        self.client.spawn_cleanup(async move {
            let _ = client.lease_revoke(lease).await;
        });
    }
}

/// A contender's lease, kept alive, and its place in a queue: what locks and elections hold.
pub(super) struct Held {
    pub place: Place,
    pub lease: u64,
    pub keep: LeaseKeepAlive,
    pub release: RevokeOnDrop,
}

impl Held {
    /// The compare that holds only while the queue key is still this holder's.
    pub(super) fn guard(&self) -> Compare {
        txn::create_revision(self.place.key.clone(), Op::Equal, self.place.revision)
    }

    /// Stops the keep-alives and revokes the lease (deleting the key, waking the next in line).
    pub(super) async fn release(self) -> Result<(), ClientError> {
        self.keep.stop().await;
        self.release.revoke().await
    }
}

/// Grants a lease of `ttl`, keeps it alive, joins the queue under `prefix` holding `value`,
/// and waits for the head of the queue. Fails if the lease is lost while waiting.
pub(super) async fn join_and_wait(
    client: &Client,
    prefix: &[u8],
    value: Vec<u8>,
    ttl: Duration,
) -> Result<Held, ClientError> {
    let grant = client.lease_grant(ttl).await?;
    let release = RevokeOnDrop::new(client, grant.id);
    let keep = client.keep_lease_alive(grant.id, Duration::from_millis(grant.ttl_ms));
    let place = queue::enqueue(client, prefix, grant.id, value).await?;
    tokio::select! {
        waited = queue::wait_for_head(client, prefix, &place) => waited?,
        () = keep.lost() => {
            return Err(ClientError::Unavailable(format!(
                "lease {:x} was lost while waiting in {}",
                grant.id,
                String::from_utf8_lossy(prefix)
            )))
        }
    }
    Ok(Held {
        place,
        lease: grant.id,
        keep,
        release,
    })
}

impl Client {
    /// Waits for lock `name` and returns it held; its lease (TTL `ttl`, at least the
    /// cluster's minimum) is kept alive until [`LockGuard::unlock`] or the guard is dropped.
    /// Waiters are served in arrival order. Cancelling the wait (dropping the future) leaves
    /// the queue.
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<LockGuard, ClientError> {
        let prefix = queue::queue_prefix(LOCK_PREFIX, name)?;
        let held = join_and_wait(self, &prefix, Vec::new(), ttl).await?;
        Ok(LockGuard {
            client: self.clone(),
            name: name.to_string(),
            held,
        })
    }
}

/// A held lock ([`Client::lock`]). Dropping it releases the lock (its lease is revoked in the
/// background); [`LockGuard::unlock`] does the same and waits for it.
pub struct LockGuard {
    client: Client,
    name: String,
    held: Held,
}

impl LockGuard {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token: the lock key's create revision, higher for every later holder.
    pub fn token(&self) -> u64 {
        self.held.place.revision
    }

    /// The lock key (`locks/NAME/<lease id>`).
    pub fn key(&self) -> &[u8] {
        &self.held.place.key
    }

    /// The lease the lock is held through.
    pub fn lease(&self) -> u64 {
        self.held.lease
    }

    /// How the lease stands, as this holder can know it.
    pub fn state(&self) -> LeaseState {
        self.held.keep.state()
    }

    /// A receiver of the lease's state changes.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.held.keep.subscribe()
    }

    /// Resolves when the lock is lost (its lease is gone or could not be confirmed for a TTL).
    pub async fn lost(&self) {
        self.held.keep.lost().await
    }

    /// A transaction compare that holds only while this guard's key still exists with this
    /// token: put it in every write the lock protects, so a stale holder's write fails.
    pub fn guard(&self) -> Compare {
        self.held.guard()
    }

    /// Runs `ops` only if the lock is still held (see [`Self::guard`]); `succeeded` in the
    /// reply says whether they ran.
    pub async fn guarded_txn(&self, ops: Vec<TxnOp>) -> Result<TxnResponse, ClientError> {
        let req = TxnRequest {
            compare: vec![self.guard()],
            success: ops,
            failure: Vec::new(),
        };
        self.client.txn(req, None).await
    }

    /// Releases the lock: revokes its lease, which deletes the key and wakes the next waiter
    /// (a lease already gone is not an error: the lock is released either way).
    pub async fn unlock(self) -> Result<(), ClientError> {
        self.held.release().await
    }
}
