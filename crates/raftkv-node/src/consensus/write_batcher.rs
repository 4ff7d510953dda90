//! `WriteBatcher`: turns many concurrent client writes into few Raft log entries.
//!
//! Every log entry costs its own encoding, append, replication message slot, apply and
//! response bookkeeping on every node, so one entry per client write spends most of a node's
//! CPU on overhead under load. The batcher sits in front of `client_write`: while up to
//! [`MAX_IN_FLIGHT`] proposals are being replicated, the writes that arrive queue up, and the
//! next proposal takes all of them (up to [`MAX_BATCH_WRITES`] / [`MAX_BATCH_BYTES`]) as one
//! [`Command::Batch`] entry. A lone write is proposed as itself, at once, and from the caller's
//! own task when nothing is queued and a proposal slot is free (no hand-off to the batching
//! task): batching adds no latency when there is nothing to batch with.
//!
//! Two rules keep the meaning of each write intact:
//! - a batch never holds two writes that touch the same key, nor a write that touches a range
//!   ([`Command::point_keys`]); such a write waits for the next batch. (The rule dates from
//!   when a batch shared one revision; every write now gets its own, and the applier reads
//!   through the earlier writes of its batch, so it is kept only until measured without it);
//! - writes keep their arrival order: a write that cannot join the current batch starts the
//!   next one, and nothing behind it is taken first.
//!
//! Each write keeps its own exactly-once session and gets its own response (or error).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use raftkv_store::command::{BatchedWrite, ClientSession, Command, Request as SmRequest, Response as SmResponse};
use raftkv_store::types::Raft;
use raftkv_store::NodeId;

use crate::api::error::ApiError;

/// Proposals replicating at once. One gives the largest batches, and keeps proposals reaching
/// RaftCore in arrival order without more machinery; measured on the 2-core benchmark machine
/// (openraft 0.9) it beat two (64 clients: 7.5k vs 7.1k puts/s, p99 13 vs 15 ms).
pub const MAX_IN_FLIGHT: usize = 1;
/// Most writes in one entry.
pub const MAX_BATCH_WRITES: usize = 256;
/// Most key and value bytes in one entry (far below the 2 MiB peer message limit, so an
/// AppendEntries carrying several entries still fits).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The answer to one write: the state machine's response, or why it failed.
pub type WriteResult = Result<SmResponse, ApiError>;

struct Pending {
    session: Option<ClientSession>,
    command: Command,
    reply: oneshot::Sender<WriteResult>,
}

impl Pending {
    fn bytes(&self) -> usize {
        match &self.command {
            Command::Put { key, value, .. } => key.len() + value.len(),
            other => other.point_keys().map_or(0, |keys| keys.iter().map(|k| k.len()).sum()),
        }
    }
}

/// The front of the write path on one node. Cheap to clone.
#[derive(Clone)]
pub struct WriteBatcher {
    id: NodeId,
    queue: mpsc::UnboundedSender<Pending>,
    shared: Arc<Shared>,
}

/// What the callers and the batching task share.
struct Shared {
    raft: Raft,
    now_millis: fn() -> u64,
    /// Proposal slots ([`MAX_IN_FLIGHT`]).
    in_flight: Arc<Semaphore>,
    /// Writes sent to the batching task and not yet taken into a batch.
    queued: AtomicUsize,
}

impl WriteBatcher {
    /// Starts the batching task for `raft` (it ends when every `WriteBatcher` clone is gone).
    pub fn new(id: NodeId, raft: Raft, now_millis: fn() -> u64) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            raft,
            now_millis,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            queued: AtomicUsize::new(0),
        });
        tokio::spawn(run(id, shared.clone(), rx));
        Self { id, queue, shared }
    }

    /// Proposes `command` (in a batch when others are waiting) and waits for its answer.
    ///
    /// When nothing is queued and a proposal slot is free, the write is proposed from the
    /// caller's own task: a lone write then skips two task hand-offs, which at low load are a
    /// visible part of its latency.
    pub async fn write(&self, command: Command, session: Option<ClientSession>) -> WriteResult {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            session,
            command,
            reply,
        };
        if self.shared.queued.load(Ordering::Acquire) == 0 {
            if let Ok(permit) = self.shared.in_flight.clone().try_acquire_owned() {
                propose(self.id, &self.shared.raft, vec![pending], (self.shared.now_millis)()).await;
                drop(permit);
                return answer.await.unwrap_or(Err(ApiError::ShuttingDown(self.id)));
            }
        }
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(pending).is_err() {
            return Err(ApiError::ShuttingDown(self.id));
        }
        answer.await.unwrap_or(Err(ApiError::ShuttingDown(self.id)))
    }
}

/// Collects the writes of the next batch: `first`, then whatever is queued that may join it.
/// Returns the batch and the write that has to start the one after, if any.
fn collect(first: Pending, rx: &mut mpsc::UnboundedReceiver<Pending>) -> (Vec<Pending>, Option<Pending>) {
    let mut keys: HashSet<Vec<u8>> = HashSet::new();
    let exclusive = match first.command.point_keys() {
        Some(k) => {
            keys.extend(k.into_iter().map(<[u8]>::to_vec));
            false
        }
        None => true,
    };
    let mut bytes = first.bytes();
    let mut batch = vec![first];
    if exclusive {
        return (batch, None);
    }
    while batch.len() < MAX_BATCH_WRITES {
        let Ok(next) = rx.try_recv() else {
            break;
        };
        let joins = match next.command.point_keys() {
            Some(k) => bytes + next.bytes() <= MAX_BATCH_BYTES && k.iter().all(|key| !keys.contains(*key)),
            None => false,
        };
        if !joins {
            return (batch, Some(next));
        }
        if let Some(k) = next.command.point_keys() {
            keys.extend(k.into_iter().map(<[u8]>::to_vec));
        }
        bytes += next.bytes();
        batch.push(next);
    }
    (batch, None)
}

async fn run(id: NodeId, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a proposal slot before collecting, so the batch grows while we wait.
        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
            return;
        };
        let (batch, next) = collect(first, &mut rx);
        shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        carried = next;
        let shared = shared.clone();
        tokio::spawn(async move {
            propose(id, &shared.raft, batch, (shared.now_millis)()).await;
            drop(permit);
        });
    }
}

async fn propose(id: NodeId, raft: &Raft, mut batch: Vec<Pending>, timestamp_ms: u64) {
    if batch.len() == 1 {
        let Some(one) = batch.pop() else { return };
        let request = SmRequest {
            timestamp_ms,
            session: one.session,
            command: one.command,
        };
        let result = match raft.client_write(request).await {
            Ok(r) => answer(r.data),
            Err(e) => Err(ApiError::from_client_write(id, e)),
        };
        let _ = one.reply.send(result);
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    let writes = batch
        .into_iter()
        .map(|p| {
            replies.push(p.reply);
            BatchedWrite {
                session: p.session,
                command: p.command,
            }
        })
        .collect();
    let request = SmRequest {
        timestamp_ms,
        session: None,
        command: Command::Batch(writes),
    };
    match raft.client_write(request).await {
        Ok(r) => match r.data {
            SmResponse::Batch(responses) if responses.len() == replies.len() => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(answer(response));
                }
            }
            other => {
                // Applied, but the answers cannot be matched to the writes.
                let e = ApiError::Indeterminate(format!(
                    "a batch of {} writes was answered with {other:?}",
                    replies.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            let e = ApiError::from_client_write(id, e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn answer(response: SmResponse) -> WriteResult {
    match response {
        SmResponse::AlreadyAcknowledged { client_id, seq } => Err(ApiError::AlreadyAcknowledged { client_id, seq }),
        SmResponse::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(id)),
        SmResponse::LeaseExists { id } => Err(ApiError::LeaseExists(id)),
        data => Ok(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> (Pending, oneshot::Receiver<WriteResult>) {
        let (reply, rx) = oneshot::channel();
        let p = Pending {
            session: None,
            command: Command::Put {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                prev_kv: false,
            },
            reply,
        };
        (p, rx)
    }

    fn range_delete() -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            session: None,
            command: Command::DeleteRange {
                start: b"a".to_vec(),
                end: None,
                prev_kv: false,
            },
            reply,
        }
    }

    fn keys(batch: &[Pending]) -> Vec<String> {
        batch
            .iter()
            .map(|p| match &p.command {
                Command::Put { key, .. } => String::from_utf8_lossy(key).into_owned(),
                _ => "<range>".to_string(),
            })
            .collect()
    }

    #[test]
    fn queued_writes_to_different_keys_share_a_batch() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for k in ["b", "c", "d"] {
            tx.send(put(k).0).ok();
        }
        let (batch, next) = collect(put("a").0, &mut rx);
        assert_eq!(keys(&batch), ["a", "b", "c", "d"]);
        assert!(next.is_none());
    }

    #[test]
    fn a_second_write_to_a_key_starts_the_next_batch_and_keeps_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for k in ["b", "a", "c"] {
            tx.send(put(k).0).ok();
        }
        let (batch, next) = collect(put("a").0, &mut rx);
        assert_eq!(keys(&batch), ["a", "b"]);
        let next = next.expect("the second write to a is carried");
        let (batch2, _) = collect(next, &mut rx);
        assert_eq!(keys(&batch2), ["a", "c"], "c waits behind the carried write");
    }

    #[test]
    fn a_range_write_goes_alone() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(range_delete()).ok();
        tx.send(put("z").0).ok();
        let (batch, next) = collect(put("a").0, &mut rx);
        assert_eq!(keys(&batch), ["a"]);
        let (batch2, next2) = collect(next.expect("carried"), &mut rx);
        assert_eq!(keys(&batch2), ["<range>"]);
        assert!(next2.is_none(), "nothing joins a range write");
    }

    #[test]
    fn batches_stop_at_the_byte_limit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let big = |k: &str| {
            let (mut p, _) = put(k);
            if let Command::Put { value, .. } = &mut p.command {
                *value = vec![0; MAX_BATCH_BYTES / 2];
            }
            p
        };
        tx.send(big("b")).ok();
        tx.send(big("c")).ok();
        let (batch, next) = collect(big("a"), &mut rx);
        assert_eq!(batch.len(), 1, "a and b together pass the byte limit");
        assert!(next.is_some());
    }
}
