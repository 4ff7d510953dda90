//! Client sessions: what makes a retried write apply once (Raft thesis §6.3).
//!
//! For each client id the state machine keeps a [`SessionRecord`] (under `s/` + the id,
//! big-endian, in the state tree, so it travels in snapshots): the answers to the writes it
//! applied whose seq the client has not yet acknowledged, the client's `acked_below`
//! watermark, and when the client was last seen. A write whose seq has a saved answer is a
//! retry: the saved answer is returned and nothing is applied again.
//!
//! Sessions expire deterministically: time is the *log clock* — the largest leader timestamp
//! applied so far — never a local clock. Every [`SESSION_GC_INTERVAL_MS`] of log time, sessions
//! not seen for [`SESSION_TTL_MS`] are dropped. A client idle for longer than that gets a fresh
//! session; a write it retries after that long could apply twice (the client's deadlines are
//! seconds, so it does not retry that late).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{ClientSession, Response};

/// Prefix of session records in the state tree.
pub(crate) const SESSION_PREFIX: &[u8] = b"s/";
/// A session not seen for this long (log time) is dropped.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// How often (log time) expired sessions are looked for.
pub const SESSION_GC_INTERVAL_MS: u64 = 60 * 1000;
/// Most unacknowledged answers kept per client; past it the oldest are forgotten (a retry of
/// one of those would apply again). A client keeps at most its in-flight writes unacknowledged.
pub const MAX_SAVED_REPLIES: usize = 4096;

pub(crate) fn session_key(client_id: u64) -> Vec<u8> {
    let mut k = SESSION_PREFIX.to_vec();
    k.extend_from_slice(&client_id.to_be_bytes());
    k
}

/// One client's session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub replies: BTreeMap<u64, Response>,
    pub acked_below: u64,
    pub last_seen_ms: u64,
}

/// What to do with a write that carries a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Not seen before: apply it.
    New,
    /// A retry of an applied write: answer with this, apply nothing.
    Duplicate(Response),
    /// A retry of a write the client already has the answer to: apply nothing.
    AlreadyAcknowledged,
}

impl SessionRecord {
    pub fn admit(&self, s: &ClientSession) -> Admission {
        if s.seq < self.acked_below.max(s.acked_below) {
            return Admission::AlreadyAcknowledged;
        }
        match self.replies.get(&s.seq) {
            Some(r) => Admission::Duplicate(r.clone()),
            None => Admission::New,
        }
    }

    /// Records the answer to a newly applied write and forgets acknowledged ones.
    pub fn record(&mut self, s: &ClientSession, timestamp_ms: u64, response: &Response) {
        self.acked_below = self.acked_below.max(s.acked_below);
        self.replies.insert(s.seq, response.clone());
        self.replies = self.replies.split_off(&self.acked_below);
        while self.replies.len() > MAX_SAVED_REPLIES {
            self.replies.pop_first();
        }
        self.last_seen_ms = self.last_seen_ms.max(timestamp_ms);
    }

    pub fn expired(&self, clock_ms: u64) -> bool {
        self.last_seen_ms.saturating_add(SESSION_TTL_MS) < clock_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(seq: u64, acked_below: u64) -> ClientSession {
        ClientSession {
            client_id: 9,
            seq,
            acked_below,
        }
    }

    fn reply(revision: u64) -> Response {
        Response::Put {
            revision,
            prev_kv: None,
        }
    }

    #[test]
    fn retries_get_the_saved_answer_and_acknowledged_ones_are_forgotten() {
        let mut rec = SessionRecord::default();
        assert_eq!(rec.admit(&s(1, 1)), Admission::New);
        rec.record(&s(1, 1), 100, &reply(10));
        // Two writes in flight at once, applied out of order.
        rec.record(&s(3, 1), 101, &reply(11));
        assert_eq!(rec.admit(&s(2, 1)), Admission::New, "seq 2 was never applied");
        rec.record(&s(2, 1), 102, &reply(12));
        assert_eq!(rec.admit(&s(3, 1)), Admission::Duplicate(reply(11)));
        // The client now has every answer below 4.
        rec.record(&s(4, 4), 103, &reply(13));
        assert_eq!(rec.replies.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(rec.admit(&s(2, 1)), Admission::AlreadyAcknowledged);
        assert_eq!(rec.last_seen_ms, 103);
    }

    #[test]
    fn expiry_follows_the_log_clock() {
        let mut rec = SessionRecord::default();
        rec.record(&s(1, 1), 1_000, &reply(1));
        assert!(!rec.expired(1_000 + SESSION_TTL_MS));
        assert!(rec.expired(1_001 + SESSION_TTL_MS));
    }

    #[test]
    fn saved_answers_are_bounded() {
        let mut rec = SessionRecord::default();
        for seq in 0..(MAX_SAVED_REPLIES as u64 + 10) {
            rec.record(&s(seq, 0), seq, &reply(seq));
        }
        assert_eq!(rec.replies.len(), MAX_SAVED_REPLIES);
        assert_eq!(rec.replies.keys().next(), Some(&10));
    }
}
