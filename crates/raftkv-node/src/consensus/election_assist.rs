//! `ElectionAssist`: when the leader is gone and a candidate with a shorter log asks this node
//! for its vote, this node campaigns itself at once instead of waiting for its own timer.
//!
//! Under a steady write load the two followers of a dead leader rarely hold the same log: one
//! got the last AppendEntries, the other did not. If the one with the shorter log times out
//! first, it campaigns at term T+1 and is refused (Raft's up-to-date rule), and openraft 0.9
//! refuses without adopting T+1. The better-placed node then campaigns on its own timer, at
//! T+1 too, and is refused by the first, which has voted for itself in T+1. Only a third
//! round elects it: measured, that turned a ~220 ms failover into 400–800 ms.
//!
//! The assist shortens that path. When this node refuses a vote because its log is longer,
//! and it has not heard an AppendEntries for at least `silence` (so the leader is gone for it
//! too — a node still hearing a live leader never assists), it triggers elections until its
//! term passes the candidate's: one at T+1, which the candidate refuses, then one at T+2, which
//! the candidate grants. Elections are always safe in Raft; the guard only avoids disturbing a
//! live leader. It assists at most once per candidate term.
//!
//! A leader never assists: it hears no AppendEntries, so by the rule above it would always
//! think the leader silent and campaign against itself (it used to log that advice to itself).
//! A restarted node needs no help either: with pre-vote on (openraft 0.10), a node that comes
//! back cannot raise its term while a healthy leader holds the others' leases, so the earlier
//! "hold elections after a restart" is gone.
//!
//! Last, it stops a stale delay from slowing the *next* failover. When openraft (0.9 and 0.10)
//! sees a vote or pre-vote refusal carrying a longer log than its own, it adds 2 × election-max to its election
//! timeout, and clears that only when it next campaigns from its own timer, which may be many
//! failovers later: measured, a survivor carrying the flag turned a ~230 ms failover into
//! ~400–550 ms. The delay exists to let the better-placed node campaign first, which the assist
//! above already makes happen at once, so [`without_greater_log_hint`] removes the hint from
//! refusals before openraft sees them.

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv_store::types::Raft;
use raftkv_store::{LogId, NodeId};

use crate::consensus::leadership::LeaderContact;

type VoteResponse = openraft::raft::VoteResponse<raftkv_store::TypeConfig>;

/// Remembers when this node last heard from a leader and whom it assisted against.
#[derive(Clone)]
pub struct ElectionAssist {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    id: NodeId,
    silence: Duration,
    contact: LeaderContact,
    assisted_term: AtomicU64,
}

/// What a refused vote request looked like.
#[derive(Debug, Clone, Copy)]
pub struct RefusedVote {
    pub candidate: NodeId,
    pub candidate_term: u64,
    pub candidate_last_log: Option<LogId>,
    pub my_last_log: Option<LogId>,
}

impl ElectionAssist {
    /// `silence`: how long without AppendEntries before this node believes the leader gone
    /// (the election-min timeout is a good value: the candidate waited longer than that).
    pub fn new(raft: Raft, id: NodeId, silence: Duration, contact: LeaderContact) -> Self {
        Self {
            inner: Arc::new(Inner {
                raft,
                id,
                silence,
                contact,
                assisted_term: AtomicU64::new(0),
            }),
        }
    }

    /// An AppendEntries (or heartbeat) arrived from a leader.
    pub fn heard_from_leader(&self) {
        self.inner.contact.heard();
    }

    /// Whether to campaign after refusing `vote` (see [`should_assist`]).
    pub fn should_assist(&self, vote: &RefusedVote) -> bool {
        let last_append = self.inner.contact.last();
        should_assist(vote, last_append, self.inner.silence, &self.inner.assisted_term)
    }

    /// Called after this node refused `vote`; campaigns when [`should_assist`](Self::should_assist).
    pub fn after_refusal(&self, vote: RefusedVote) {
        let leading = self.inner.raft.metrics().borrow_watched().state == openraft::ServerState::Leader;
        if leading || !self.should_assist(&vote) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let my_term = inner.raft.metrics().borrow_watched().vote.leader_id().term;
            // Each election raises the term by one; end strictly above the candidate's.
            let rounds = (vote.candidate_term + 1).saturating_sub(my_term).clamp(1, 3);
            tracing::info!(
                node = inner.id,
                candidate = vote.candidate,
                candidate_term = vote.candidate_term,
                "the leader is silent and a candidate with a shorter log asked for a vote: campaigning now"
            );
            for _ in 0..rounds {
                if let Err(e) = inner.raft.trigger().elect(false).await {
                    tracing::warn!(error = %e, "could not start an election");
                    return;
                }
            }
        });
    }
}

/// A vote reply as the candidate's Raft should see it: a refusal's `last_log_id` is used by
/// openraft 0.9 only to set its sticky "seen a greater log" delay, so a refusal naming a log
/// longer than the candidate's names the candidate's own instead. Grants, and refusals for
/// other reasons, pass through unchanged; the vote itself (the term) is never touched.
pub fn without_greater_log_hint(mut resp: VoteResponse, candidate_last_log: Option<LogId>) -> VoteResponse {
    if !resp.vote_granted && resp.last_log_id > candidate_last_log {
        resp.last_log_id = candidate_last_log;
    }
    resp
}

/// The decision: only for a refusal on log length, only when no AppendEntries arrived for
/// `silence`, and once per candidate term (`assisted_term` remembers the highest).
pub fn should_assist(
    vote: &RefusedVote,
    last_append: Option<Instant>,
    silence: Duration,
    assisted_term: &AtomicU64,
) -> bool {
    let leader_silent = last_append.is_none_or(|at| at.elapsed() >= silence);
    vote.my_last_log > vote.candidate_last_log
        && leader_silent
        && assisted_term.fetch_max(vote.candidate_term, Ordering::SeqCst) < vote.candidate_term
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_store::types::LeaderId;

    fn log(index: u64) -> Option<LogId> {
        Some(LogId::new(LeaderId { term: 1, node_id: 1 }, index))
    }

    fn refused(candidate_term: u64, candidate_last: u64, mine: u64) -> RefusedVote {
        RefusedVote {
            candidate: 2,
            candidate_term,
            candidate_last_log: log(candidate_last),
            my_last_log: log(mine),
        }
    }

    const SILENCE: Duration = Duration::from_millis(70);

    #[test]
    fn assists_a_shorter_log_once_per_term_when_the_leader_is_silent() {
        let assisted = AtomicU64::new(0);
        let decide = |v: RefusedVote| should_assist(&v, None, SILENCE, &assisted);
        assert!(decide(refused(5, 10, 12)));
        assert!(!decide(refused(5, 10, 12)), "once per candidate term");
        assert!(decide(refused(6, 10, 12)), "a later term is a new election");
        let long_ago = Instant::now().checked_sub(Duration::from_secs(1));
        assert!(should_assist(&refused(7, 10, 12), long_ago, SILENCE, &assisted));
    }

    #[test]
    fn a_refusal_for_a_longer_log_reaches_openraft_without_the_longer_log() {
        let vote = openraft::Vote::new(7, 3);
        let refused = VoteResponse::new(vote, log(12), false);
        let seen = without_greater_log_hint(refused, log(10));
        assert_eq!((seen.vote, seen.last_log_id, seen.vote_granted), (vote, log(10), false));

        let granted = VoteResponse::new(vote, log(12), true);
        assert_eq!(without_greater_log_hint(granted.clone(), log(10)).last_log_id, log(12));
        let shorter = VoteResponse::new(vote, log(9), false);
        assert_eq!(without_greater_log_hint(shorter, log(10)).last_log_id, log(9));
    }

    #[test]
    fn never_assists_while_a_leader_is_heard_or_when_the_candidate_is_as_up_to_date() {
        let fresh = || AtomicU64::new(0);
        let just_now = Some(Instant::now());
        assert!(!should_assist(&refused(5, 10, 12), just_now, SILENCE, &fresh()));
        assert!(
            !should_assist(&refused(5, 12, 12), None, SILENCE, &fresh()),
            "equal logs: not our place"
        );
        assert!(!should_assist(&refused(5, 13, 12), None, SILENCE, &fresh()));
    }
}
