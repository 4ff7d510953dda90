//! Health: whether this node can usefully serve, for load balancers and scripts.
//!
//! A node is SERVING when it is a member (and was not removed), knows a leader, and is caught
//! up:
//! - a leader must have heard from a quorum within the maximum election timeout (a leader cut off
//!   from the majority stops serving even though it still believes it leads);
//! - a follower must have heard from its leader within the maximum election timeout (with
//!   pre-vote, a follower cut off from everyone keeps naming its old leader), and have applied up
//!   to within [`MAX_APPLY_LAG`] entries of the commit index the leader told it.
//!
//! The verdict is recomputed every [`CHECK_INTERVAL`] and published three ways: the standard gRPC
//! health service (`grpc.health.v1.Health`, service names `""` and `raftkv.v1.KV`), `/readyz` on
//! the metrics port, and the `raftkv_serving` gauge.

use openraft::async_runtime::WatchReceiver;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::consensus::core::NodeCore;

/// Most entries a follower may be behind the commit index and still be SERVING.
pub const MAX_APPLY_LAG: u64 = 1000;
/// How often health is recomputed.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// A health verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub serving: bool,
    pub reason: String,
}

impl Health {
    fn not(reason: String) -> Self {
        Self { serving: false, reason }
    }
}

/// What the verdict depends on (a pure function of these, for testing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthInputs {
    pub state: ServerState,
    pub is_member: bool,
    pub leader: Option<u64>,
    pub millis_since_quorum_ack: Option<u64>,
    /// On a follower: milliseconds since it last heard from a leader (None: not since start).
    pub millis_since_leader_contact: Option<u64>,
    pub committed: u64,
    pub applied: u64,
    pub election_max_ms: u64,
}

pub fn evaluate(i: &HealthInputs) -> Health {
    if i.state == ServerState::Shutdown {
        return Health::not("shutting down".into());
    }
    if !i.is_member {
        return Health::not("not a member of a cluster yet".into());
    }
    let Some(leader) = i.leader else {
        return Health::not("no leader known (election under way, or no quorum reachable)".into());
    };
    if i.state == ServerState::Leader {
        match i.millis_since_quorum_ack {
            Some(ms) if ms <= i.election_max_ms => {}
            Some(ms) => return Health::not(format!("leader has not heard from a quorum for {ms} ms")),
            None => return Health::not("leader has not heard from a quorum yet".into()),
        }
    }
    if i.state != ServerState::Leader {
        if let Some(ms) = i.millis_since_leader_contact.filter(|ms| *ms > i.election_max_ms) {
            return Health::not(format!(
                "no word from leader {leader} for {ms} ms (cut off, or it is gone)"
            ));
        }
    }
    let behind = i.committed.saturating_sub(i.applied);
    if behind > MAX_APPLY_LAG {
        return Health::not(format!("catching up: {behind} entries behind the commit index"));
    }
    Health {
        serving: true,
        reason: format!("serving; leader is node {leader}"),
    }
}

/// The latest verdict, shared with `/readyz` and the metrics.
#[derive(Clone)]
pub struct HealthState {
    current: Arc<RwLock<Health>>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            current: Arc::new(RwLock::new(Health::not("starting".into()))),
        }
    }
}

impl HealthState {
    pub fn current(&self) -> Health {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, h: Health) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = h;
    }
}

/// Whether this node is in the *committed* membership (None while there is none).
type InCommittedMembership = Option<bool>;

async fn inputs(core: &NodeCore, election_max_ms: u64) -> (HealthInputs, InCommittedMembership) {
    let m = core.raft.metrics().borrow_watched().clone();
    let membership = m.committed_membership_config.clone();
    let in_committed = membership
        .log_id()
        .is_some()
        .then(|| membership.membership().get_node(&core.id).is_some());
    let committed = m.local_committed;
    let committed = committed.map_or(0, |c| c.index);
    let inputs = HealthInputs {
        state: m.state,
        is_member: m.membership_config.membership().get_node(&core.id).is_some() && !core.removal.is_removed(),
        leader: m.current_leader,
        millis_since_quorum_ack: raftkv_store::types::quorum_ack_age_ms(&m),
        millis_since_leader_contact: core.leader_contact.silent_ms(),
        committed,
        applied: m.last_applied.map_or(0, |l| l.index),
        election_max_ms,
    };
    (inputs, in_committed)
}

/// Recomputes health every [`CHECK_INTERVAL`] until `shutdown`, publishing changes.
pub fn spawn_checker(
    core: NodeCore,
    reporter: HealthReporter,
    state: HealthState,
    election_max_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        let mut was_member = false;
        loop {
            let (inputs, in_committed) = inputs(&core, election_max_ms).await;
            // Removal is noticed here too (besides the leader's notice): a node that was in the
            // committed membership and no longer is has been removed.
            match in_committed {
                Some(true) => was_member = true,
                Some(false) if was_member => core
                    .removal
                    .mark(&core.raft, "the committed membership no longer includes it"),
                _ => {}
            }
            let health = evaluate(&inputs);
            if last != Some(health.serving) {
                let status = if health.serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                reporter.set_service_status("raftkv.v1.KV", status).await;
                tracing::info!(serving = health.serving, reason = %health.reason, "health changed");
                last = Some(health.serving);
            }
            state.set(health);
            let stopping = tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            if stopping {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                reporter
                    .set_service_status("raftkv.v1.KV", ServingStatus::NotServing)
                    .await;
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_follower() -> HealthInputs {
        HealthInputs {
            state: ServerState::Follower,
            is_member: true,
            leader: Some(1),
            millis_since_quorum_ack: None,
            millis_since_leader_contact: Some(20),
            committed: 100,
            applied: 100,
            election_max_ms: 300,
        }
    }

    #[test]
    fn a_caught_up_follower_with_a_leader_serves() {
        assert!(evaluate(&healthy_follower()).serving);
    }

    #[test]
    fn each_condition_is_required_and_named() {
        let cases = [
            (
                HealthInputs {
                    leader: None,
                    ..healthy_follower()
                },
                "no leader known",
            ),
            (
                HealthInputs {
                    is_member: false,
                    ..healthy_follower()
                },
                "not a member",
            ),
            (
                HealthInputs {
                    applied: 0,
                    committed: 5000,
                    ..healthy_follower()
                },
                "5000 entries behind",
            ),
            (
                HealthInputs {
                    state: ServerState::Leader,
                    millis_since_quorum_ack: Some(900),
                    ..healthy_follower()
                },
                "has not heard from a quorum for 900 ms",
            ),
            (
                HealthInputs {
                    millis_since_leader_contact: Some(1200),
                    ..healthy_follower()
                },
                "no word from leader 1 for 1200 ms",
            ),
            (
                HealthInputs {
                    state: ServerState::Shutdown,
                    ..healthy_follower()
                },
                "shutting down",
            ),
        ];
        for (inputs, why) in cases {
            let h = evaluate(&inputs);
            assert!(!h.serving, "{inputs:?}");
            assert!(h.reason.contains(why), "{:?} lacks {why:?}", h.reason);
        }
        let leader = HealthInputs {
            state: ServerState::Leader,
            millis_since_quorum_ack: Some(40),
            ..healthy_follower()
        };
        assert!(evaluate(&leader).serving);
    }
}
