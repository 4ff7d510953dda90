//! Leader tracking and discovery: the leader as last learned (from a successful write or a
//! `raftkv-leader-addr` hint), the leader that just stopped answering (whose name other nodes'
//! hints are not worth following for a while), and finding a leader by asking the endpoints'
//! Status, polling every [`LEADER_POLL_INTERVAL`] while a failover is under way.

use std::time::Duration;

use raftkv_proto::v1::Role;
use tokio::time::Instant;

use super::Client;

/// How often a client polls the endpoints' Status while it waits for a new leader.
pub const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long one search for a leader polls before the call falls back to backoff.
const LEADER_POLL_LIMIT: Duration = Duration::from_secs(2);
/// How long a leader that stopped answering is distrusted in other nodes' hints.
const LOST_LEADER_MEMORY: Duration = Duration::from_secs(3);

impl Client {
    /// The leader's address as last learned, if any.
    pub fn known_leader(&self) -> Option<String> {
        self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    pub(super) fn forget_leader(&self, addr: &str) {
        let mut leader = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    /// The leader at `addr` refused a connection (its process is gone): forget it, and
    /// distrust hints naming it for a while. A reply lost mid-call is not enough: the node may
    /// well be alive.
    pub(super) fn leader_lost(&self, addr: &str) {
        let was_leader = self.known_leader().as_deref() == Some(addr);
        self.forget_leader(addr);
        if was_leader {
            *self.inner.lost_leader.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((addr.to_string(), Instant::now()));
        }
    }

    /// Whether a leader recently stopped answering (so an election is probably under way).
    fn failover_in_progress(&self) -> bool {
        match &*self.inner.lost_leader.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, at)) => at.elapsed() < LOST_LEADER_MEMORY,
            None => false,
        }
    }

    /// Whether `addr` is a leader that recently stopped answering.
    pub(super) fn is_lost_leader(&self, addr: &str) -> bool {
        match &*self.inner.lost_leader.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((lost, at)) => lost == addr && at.elapsed() < LOST_LEADER_MEMORY,
            None => false,
        }
    }

    /// Finds the leader. Right after the leader refused a connection, polls every
    /// [`LEADER_POLL_INTERVAL`] (up to [`LEADER_POLL_LIMIT`] or `deadline`) while no node names a
    /// live one. One call polls at a time; the others wait and take its answer.
    pub(super) async fn await_leader(&self, deadline: Instant) -> Option<String> {
        let _polling = self.inner.discovery.lock().await;
        if let Some(leader) = self.known_leader() {
            return Some(leader);
        }
        let until = deadline.min(Instant::now() + LEADER_POLL_LIMIT);
        loop {
            if let Some(leader) = self.discover_leader(deadline).await {
                return Some(leader);
            }
            // Poll only while a failover is known to be under way; otherwise one look is all
            // (the caller's backoff paces further tries).
            if !self.failover_in_progress() || Instant::now() + LEADER_POLL_INTERVAL >= until {
                return None;
            }
            tokio::time::sleep(LEADER_POLL_INTERVAL).await;
        }
    }

    /// Asks every endpoint for its status and returns the client address of the leader with
    /// the highest term, if any node knows one (other than a leader that just stopped
    /// answering, unless it says so itself).
    pub(super) async fn discover_leader(&self, deadline: Instant) -> Option<String> {
        let probe_timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(self.inner.config.attempt_timeout)
            .min(Duration::from_millis(500));
        let addrs: Vec<String> = self.snapshot().iter().map(|e| e.spec.addr.clone()).collect();
        let statuses = self.probe_all(&addrs, probe_timeout).await;
        let best = statuses
            .into_iter()
            .filter_map(|(_, s, _)| s.ok())
            .filter(|s| !s.leader_addr.is_empty())
            .filter(|s| s.role == Role::Leader as i32 || !self.is_lost_leader(&s.leader_addr))
            .max_by_key(|s| (s.term, s.role == Role::Leader as i32))?;
        let addr = best.leader_addr;
        self.set_leader(Some(addr.clone()));
        Some(addr)
    }
}
