//! `PeerGate`: one per peer, shared by every Raft stream to it. It keeps a peer that stops
//! answering from costing the HTTP/2 connection, and it keeps the log readable while a peer is
//! down.
//!
//! **Why.** openraft gives each AppendEntries a deadline of about one heartbeat. Against a frozen
//! peer (SIGSTOP, a long GC-like stall) every request times out, and dropping a timed-out gRPC
//! call resets its HTTP/2 stream: dozens of resets a second. The frozen peer reads them all when
//! it resumes, and its HTTP/2 server, which allows only 20 streams reset before they were
//! accepted, answers with GOAWAY `too_many_resets` and drops the connection, with every request
//! on it.
//!
//! **What.** A call whose caller gave up is not cancelled: it stays in flight, on a task of its
//! own, until the peer answers it or [`ABANDONED_CALL_LIMIT`] passes. While such a call waits,
//! the gate refuses new calls to that peer at once as `Unreachable` (openraft backs off and
//! retries), so at most one unanswered request per stream kind is ever outstanding and nothing
//! is reset. When the peer answers the abandoned call, the gate opens again.
//!
//! It also keeps the log quiet about a peer that is down: the first failure of a run is one
//! WARN line, then a reminder with the count every [`REMIND_EVERY`], and one line when the peer
//! answers again — never a line per failed request.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_store::NodeId;

/// Longest an abandoned call may wait for its answer before it is dropped (which resets its one
/// stream) and the gate opens.
pub const ABANDONED_CALL_LIMIT: Duration = Duration::from_secs(10);
/// Consecutive failed calls before a peer is reported as not answering (a single slow answer
/// during a catch-up is not worth a line).
pub const FAILURES_BEFORE_WARN: u64 = 5;
/// How often a peer that is still failing is mentioned again in the log.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);

/// Shared state of the calls to one peer.
#[derive(Debug)]
pub struct PeerGate {
    peer: NodeId,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Calls given up on by their caller that still wait for the peer's answer.
    abandoned: u32,
    /// When the oldest of them was given up on.
    abandoned_since: Option<Instant>,
    /// The current run of failures, if the last call failed.
    failing: Option<FailureRun>,
}

#[derive(Debug)]
struct FailureRun {
    since: Instant,
    count: u64,
    /// When the run was last written to the log (None: not yet, it is still short).
    last_logged: Option<Instant>,
}

/// One call's fate: still running, answered, or given up on by its caller (while running).
#[derive(Debug, Default)]
pub struct CallTicket {
    fate: AtomicU8,
}

const RUNNING: u8 = 0;
const ANSWERED: u8 = 1;
const ABANDONED: u8 = 2;

/// Why the gate refused a call.
#[derive(Debug, thiserror::Error)]
#[error(
    "node {peer} has not answered a request given up on {waited_ms} ms ago; holding further requests until it does"
)]
pub struct PeerNotAnswering {
    pub peer: NodeId,
    pub waited_ms: u64,
}

impl PeerGate {
    pub fn new(peer: NodeId) -> Self {
        Self {
            peer,
            state: Mutex::new(GateState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a new call go out? Refused while an abandoned call still waits for its answer.
    pub fn admit(&self) -> Result<Arc<CallTicket>, PeerNotAnswering> {
        let state = self.lock();
        match state.abandoned_since {
            Some(since) if state.abandoned > 0 => Err(PeerNotAnswering {
                peer: self.peer,
                waited_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            _ => Ok(Arc::new(CallTicket::default())),
        }
    }

    /// The caller stopped waiting for `ticket`'s call (its deadline passed) but the call goes on.
    /// False if the call had already ended (nothing to wait for).
    pub fn abandon(&self, ticket: &CallTicket) -> bool {
        let mut state = self.lock();
        let abandoned = ticket
            .fate
            .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if abandoned {
            state.abandoned += 1;
            state.abandoned_since.get_or_insert_with(Instant::now);
        }
        abandoned
    }

    /// `ticket`'s call ended (answered, failed, or dropped at [`ABANDONED_CALL_LIMIT`]).
    pub fn finish(&self, ticket: &CallTicket) {
        let mut state = self.lock();
        if ticket
            .fate
            .compare_exchange(RUNNING, ANSWERED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // It had been abandoned: one fewer to wait for.
            state.abandoned = state.abandoned.saturating_sub(1);
            if state.abandoned == 0 {
                state.abandoned_since = None;
            }
        }
    }

    /// Whether calls are being held (an abandoned call is outstanding).
    pub fn is_holding(&self) -> bool {
        self.lock().abandoned > 0
    }

    /// A call to the peer failed on the network (`what` says how). A run of failures is logged
    /// once it reaches [`FAILURES_BEFORE_WARN`], then every [`REMIND_EVERY`].
    pub fn failed(&self, what: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut state = self.lock();
        let run = state.failing.get_or_insert(FailureRun {
            since: now,
            count: 0,
            last_logged: None,
        });
        run.count += 1;
        match run.last_logged {
            None if run.count >= FAILURES_BEFORE_WARN => {
                run.last_logged = Some(now);
                tracing::warn!(
                    peer = self.peer,
                    "node {} is not answering ({what}); further failures are counted and reported when it answers again",
                    self.peer
                );
            }
            Some(at) if now.duration_since(at) >= REMIND_EVERY => {
                run.last_logged = Some(now);
                tracing::warn!(
                    peer = self.peer,
                    failures = run.count,
                    "node {} still not answering after {} s ({what})",
                    self.peer,
                    now.duration_since(run.since).as_secs()
                );
            }
            _ => {}
        }
    }

    /// A call to the peer got an answer: ends a run of failures (and says so if it was logged).
    pub fn answered(&self) {
        let mut state = self.lock();
        if let Some(run) = state.failing.take().filter(|r| r.last_logged.is_some()) {
            tracing::info!(
                peer = self.peer,
                failures = run.count,
                "node {} answers again, after {} failed requests over {} ms",
                self.peer,
                run.count,
                run.since.elapsed().as_millis()
            );
        }
    }

    /// Failed calls in the current run (0 while the peer answers).
    pub fn failures(&self) -> u64 {
        self.lock().failing.as_ref().map_or(0, |r| r.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_call_holds_new_calls_until_it_is_answered() {
        let gate = PeerGate::new(2);
        let stuck = gate.admit().expect("open at first");
        assert!(gate.abandon(&stuck));
        let refused = gate.admit().expect_err("held while the abandoned call waits");
        assert_eq!(refused.peer, 2);
        assert!(gate.is_holding());
        gate.finish(&stuck);
        assert!(!gate.is_holding());
        assert!(gate.admit().is_ok(), "open again once the peer answered");
    }

    #[test]
    fn a_call_answered_before_its_caller_gives_up_never_holds_the_gate() {
        let gate = PeerGate::new(2);
        let quick = gate.admit().expect("open");
        gate.finish(&quick);
        // The caller's timer fired just after the answer: nothing to wait for.
        assert!(!gate.abandon(&quick));
        assert!(!gate.is_holding());
        assert!(gate.admit().is_ok());
    }

    #[test]
    fn the_gate_opens_only_when_every_abandoned_call_is_answered() {
        let gate = PeerGate::new(3);
        let (a, b) = (gate.admit().expect("open"), gate.admit().expect("open"));
        assert!(gate.abandon(&a) && gate.abandon(&b));
        gate.finish(&a);
        assert!(gate.is_holding());
        gate.finish(&b);
        assert!(!gate.is_holding());
    }

    #[test]
    fn failures_are_counted_per_run_and_reset_by_an_answer() {
        let gate = PeerGate::new(3);
        for _ in 0..5 {
            gate.failed(&"connection refused");
        }
        assert_eq!(gate.failures(), 5);
        gate.answered();
        assert_eq!(gate.failures(), 0);
        gate.failed(&"timeout");
        assert_eq!(gate.failures(), 1, "a new run starts");
    }
}
