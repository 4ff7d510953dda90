//! `LeaseKeeper`: when leases expire. The applied state knows which leases exist and their
//! TTLs; only the leader knows their deadlines, kept here in memory on its monotonic clock.
//!
//! - A keep-alive restarts a lease's TTL. It must reach the leader: only the leader's clock
//!   decides, so a follower's (or a paused node's) clock can never expire anything.
//! - The deadlines belong to one leadership term. When this node starts leading (or leads in a
//!   new term), it forgets every deadline it had and gives each lease a fresh TTL from now,
//!   before it expires any: a holder that kept its lease alive with the old leader has a whole
//!   TTL to find the new one. A failover can make a lease live longer, never shorter.
//! - A lease past its deadline is revoked through the Raft log (`Command::LeaseRevoke`), so its
//!   keys are deleted on every node and every watcher sees the deletes. A revoke that fails (no
//!   quorum) is retried; meanwhile keep-alives of that lease are answered "not found".
//!
//! The clock is tokio's (`tokio::time::Instant`), so a paused or simulated runtime drives it;
//! the task that expires leases is started by the node ([`LeaseKeeper::run`]), not hidden here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raftkv_store::command::{Command, Response as SmResponse};
use raftkv_store::LeaseInfo;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::error::ApiError;
use crate::consensus::core::NodeCore;
use crate::consensus::leadership;

/// How often the leader looks for expired leases.
pub const TICK: Duration = Duration::from_millis(50);
/// How often the leader's table is reconciled with the applied state (leases granted or
/// revoked through another leader, or restored from a snapshot).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long a failed revoke waits before it is proposed again.
pub const REVOKE_RETRY: Duration = Duration::from_millis(500);
/// The longest TTL granted: a year.
pub const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// The leader's lease deadlines. Cheap to clone.
#[derive(Clone, Default)]
pub struct LeaseKeeper {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    /// The term the deadlines belong to (0: none).
    term: u64,
    deadlines: HashMap<u64, Deadline>,
    /// Expired leases whose revoke is in flight, or waiting to be retried at the instant.
    revoking: HashMap<u64, Option<Instant>>,
    last_sync: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    ttl_ms: u64,
}

impl LeaseKeeper {
    fn table(&self, term: u64) -> MutexGuard<'_, Table> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.term != term {
            // New leadership: every lease gets a fresh TTL (filled in lazily, from now).
            *table = Table {
                term,
                ..Table::default()
            };
        }
        table
    }

    /// The term this node leads in with a quorum, or the answer that sends the caller to the
    /// leader.
    fn leading(core: &NodeCore) -> Result<u64, ApiError> {
        match leadership::leading_term(&core.raft) {
            Some(term) => Ok(term),
            None => {
                crate::consensus::membership::require_leader(core)?;
                Err(ApiError::no_leader(core.id))
            }
        }
    }

    /// A lease was granted (on this leader): its TTL starts now.
    pub fn granted(&self, core: &NodeCore, id: u64, ttl_ms: u64) {
        if let Ok(term) = Self::leading(core) {
            let mut table = self.table(term);
            table.revoking.remove(&id);
            table.deadlines.insert(
                id,
                Deadline {
                    at: Instant::now() + Duration::from_millis(ttl_ms),
                    ttl_ms,
                },
            );
        }
    }

    /// A lease was revoked: forget it.
    pub fn forget(&self, id: u64) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.deadlines.remove(&id);
        table.revoking.remove(&id);
    }

    /// On the leader, lease `id` as the state has it and this term's table — unless it does not
    /// exist or has expired (its revoke may still be on the way): `LeaseNotFound`.
    fn live_lease(&self, core: &NodeCore, id: u64) -> Result<(MutexGuard<'_, Table>, LeaseInfo), ApiError> {
        let term = Self::leading(core)?;
        let lease = core.store.reader().lease(id)?.ok_or(ApiError::LeaseNotFound(id))?;
        let table = self.table(term);
        if table.revoking.contains_key(&id) {
            return Err(ApiError::LeaseNotFound(id));
        }
        Ok((table, lease))
    }

    /// Restarts lease `id`'s TTL; returns the TTL. `LeaseNotFound` when it does not exist or
    /// has expired (its revoke may still be on the way).
    pub fn keep_alive(&self, core: &NodeCore, id: u64) -> Result<u64, ApiError> {
        let (mut table, lease) = self.live_lease(core, id)?;
        table.deadlines.insert(
            id,
            Deadline {
                at: Instant::now() + Duration::from_millis(lease.ttl_ms),
                ttl_ms: lease.ttl_ms,
            },
        );
        Ok(lease.ttl_ms)
    }

    /// How long lease `id` has left, and the TTL it was granted with.
    pub fn time_to_live(&self, core: &NodeCore, id: u64) -> Result<(Duration, u64), ApiError> {
        let (mut table, lease) = self.live_lease(core, id)?;
        let deadline = *table.deadlines.entry(id).or_insert(Deadline {
            at: Instant::now() + Duration::from_millis(lease.ttl_ms),
            ttl_ms: lease.ttl_ms,
        });
        Ok((deadline.at.saturating_duration_since(Instant::now()), lease.ttl_ms))
    }

    /// Expires leases while this node leads, until `shutdown`.
    pub async fn run(self, core: NodeCore, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let Some(term) = leadership::leading_term(&core.raft) else {
                continue;
            };
            if let Err(e) = self.sync(&core, term) {
                tracing::warn!("cannot read the leases: {e}");
                continue;
            }
            for id in self.due(term) {
                tokio::spawn(self.clone().revoke(core.clone(), term, id));
            }
        }
    }

    /// Reconciles the table with the applied state, at most every [`SYNC_EVERY`]: a lease the
    /// table lacks gets a fresh TTL from now; one the state no longer has is dropped.
    fn sync(&self, core: &NodeCore, term: u64) -> Result<(), ApiError> {
        let now = Instant::now();
        {
            let table = self.table(term);
            if table.last_sync.is_some_and(|at| now.duration_since(at) < SYNC_EVERY) {
                return Ok(());
            }
        }
        let leases = core.store.reader().leases()?;
        let mut table = self.table(term);
        table.last_sync = Some(now);
        let live: HashSet<u64> = leases.iter().map(|l| l.id).collect();
        table.deadlines.retain(|id, _| live.contains(id));
        table.revoking.retain(|id, _| live.contains(id));
        for lease in leases {
            table.deadlines.entry(lease.id).or_insert(Deadline {
                at: now + Duration::from_millis(lease.ttl_ms),
                ttl_ms: lease.ttl_ms,
            });
        }
        Ok(())
    }

    /// The leases whose revoke should be proposed now (marked as in flight).
    fn due(&self, term: u64) -> Vec<u64> {
        let now = Instant::now();
        let mut table = self.table(term);
        let mut due: Vec<u64> = table
            .deadlines
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            if let Some(d) = table.deadlines.remove(id) {
                tracing::info!(lease = format!("{id:x}"), ttl_ms = d.ttl_ms, "lease expired");
            }
        }
        due.extend(
            table
                .revoking
                .iter()
                .filter(|(_, retry)| retry.is_some_and(|at| at <= now))
                .map(|(id, _)| *id),
        );
        for id in &due {
            table.revoking.insert(*id, None);
        }
        due
    }

    /// Proposes the revoke of expired lease `id`; on failure, schedules a retry.
    async fn revoke(self, core: NodeCore, term: u64, id: u64) {
        let outcome = core.write(Command::LeaseRevoke { id }, None).await;
        let mut table = self.table(term);
        match outcome {
            Ok(SmResponse::LeaseRevoked { deleted, .. }) => {
                tracing::debug!(lease = format!("{id:x}"), deleted, "expired lease revoked");
                table.revoking.remove(&id);
            }
            Ok(_) | Err(ApiError::LeaseNotFound(_)) => {
                table.revoking.remove(&id);
            }
            Err(e) => {
                tracing::debug!(
                    lease = format!("{id:x}"),
                    "revoke of an expired lease failed, retrying: {e}"
                );
                table.revoking.insert(id, Some(Instant::now() + REVOKE_RETRY));
            }
        }
    }
}
