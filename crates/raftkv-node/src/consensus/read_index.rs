//! Linearizable reads on any node, with concurrent reads sharing one read-index round.
//!
//! A linearizable read needs a *read index*: a log index such that, once the local state
//! machine has applied it, the local state reflects every write acknowledged before the read
//! began. The leader gets one by confirming its leadership with a quorum (openraft's
//! `get_read_log_id`, i.e. ReadIndex); a follower asks the leader over the peer API
//! (`RaftPeer/ReadIndex`) and then waits for its own state machine to catch up — so a follower
//! read is exactly as fresh as a leader read.
//!
//! [`ReadIndexBatcher`] makes concurrent reads share rounds: a read joins the round that starts
//! next, never one already in flight (that round may have confirmed leadership before the read
//! began, which would not be linearizable). While a round is in flight, new reads queue; when it
//! ends, one new round serves every queued read. Under load the number of rounds grows with the
//! round-trip time, not with the read rate.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_proto::v1::raft_peer_client::RaftPeerClient;
use raftkv_proto::v1::ReadIndexRequest;
use raftkv_proto::{error_kind, metadata};
use raftkv_store::types::Raft;
use raftkv_store::NodeId;
use tokio::sync::oneshot;

use openraft::ServerState;

use crate::api::error::ApiError;
use crate::consensus::leadership::{self, Standing};
use crate::consensus::transport::network::PeerNetwork;

type FetchFuture = Pin<Box<dyn Future<Output = Result<u64, ApiError>> + Send>>;
type Fetch = Arc<dyn Fn() -> FetchFuture + Send + Sync>;

/// Runs read-index rounds for concurrent callers (see the module docs).
#[derive(Clone)]
pub struct ReadIndexBatcher {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    fetch: Fetch,
    queue: Mutex<Queue>,
    requests: AtomicU64,
    rounds: AtomicU64,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<oneshot::Sender<Result<u64, ApiError>>>,
    round_running: bool,
}

impl ReadIndexBatcher {
    /// A batcher whose rounds call `fetch`.
    pub fn new<F, Fut>(id: NodeId, fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u64, ApiError>> + Send + 'static,
    {
        let fetch: Fetch = Arc::new(move || Box::pin(fetch()));
        Self {
            inner: Arc::new(Inner {
                id,
                fetch,
                queue: Mutex::new(Queue::default()),
                requests: AtomicU64::new(0),
                rounds: AtomicU64::new(0),
            }),
        }
    }

    /// A read index obtained by a round that started after this call.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let start_round = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push(tx);
            !std::mem::replace(&mut q.round_running, true)
        };
        if start_round {
            tokio::spawn(self.clone().run_rounds());
        }
        rx.await.map_err(|_| ApiError::ShuttingDown(self.inner.id))?
    }

    async fn run_rounds(self) {
        loop {
            let batch = {
                let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.waiting.is_empty() {
                    q.round_running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            self.inner.rounds.fetch_add(1, Ordering::Relaxed);
            let result = (self.inner.fetch)().await;
            for waiter in batch {
                // A waiter whose call was cancelled (deadline) is gone; that is fine.
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// Calls to [`Self::read_index`] so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.inner.rounds.load(Ordering::Relaxed)
    }
}

/// The two batchers of a node.
#[derive(Clone)]
pub struct ReadPath {
    /// Leader only: confirms leadership with a quorum. Serves this node's own reads when it
    /// leads, and followers' `ReadIndex` requests.
    pub confirm: ReadIndexBatcher,
    /// This node's linearizable reads: through `confirm` when leading, else from the leader.
    pub reads: ReadIndexBatcher,
}

/// How long a follower waits for the leader's read index before giving up on the round.
const REMOTE_READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

impl ReadPath {
    pub fn new(id: NodeId, raft: Raft, peers: PeerNetwork) -> Self {
        let confirm = {
            let raft = raft.clone();
            ReadIndexBatcher::new(id, move || {
                let raft = raft.clone();
                async move { confirm_leadership(id, &raft).await }
            })
        };
        let reads = {
            let confirm = confirm.clone();
            ReadIndexBatcher::new(id, move || {
                let (raft, confirm, peers) = (raft.clone(), confirm.clone(), peers.clone());
                async move { read_index_anywhere(id, &raft, &confirm, &peers).await }
            })
        };
        Self { confirm, reads }
    }
}

/// One read-index round for this node's own reads: confirmed by this node while it leads,
/// else asked of the leader it knows. A leader that loses its leadership during the round asks
/// the new leader, like a follower would.
async fn read_index_anywhere(
    id: NodeId,
    raft: &Raft,
    confirm: &ReadIndexBatcher,
    peers: &PeerNetwork,
) -> Result<u64, ApiError> {
    let leading = raft.metrics().borrow_watched().state == ServerState::Leader;
    let refused = if leading {
        match confirm.read_index().await {
            Err(e @ (ApiError::NotLeader { .. } | ApiError::NoLeader { .. })) => Some(e),
            done => return done,
        }
    } else {
        None
    };
    let (leader, leader_peer_addr) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader.filter(|l| *l != id);
        let addr = leader
            .and_then(|l| m.membership_config.membership().get_node(&l))
            .map(|n| n.peer_addr.clone());
        (leader, addr)
    };
    match (leader, leader_peer_addr) {
        (Some(leader), Some(addr)) => remote_read_index(id, leader, &addr, peers).await,
        _ => Err(refused.unwrap_or_else(|| ApiError::no_leader(id))),
    }
}

/// The leader's read index, confirmed by a quorum (ReadIndex; no clock-based lease). A leader
/// that has stepped down (no quorum within the lease, see [`leadership`]) refuses at once rather
/// than wait for a quorum that is not there.
async fn confirm_leadership(id: NodeId, raft: &Raft) -> Result<u64, ApiError> {
    let standing = leadership::standing(&raft.metrics().borrow_watched(), leadership::lease_of(raft));
    if let Standing::SteppedDown { silent_ms } = standing {
        return Err(ApiError::stepped_down(id, Some(silent_ms)));
    }
    match raft.get_read_log_id(openraft::ReadPolicy::ReadIndex).await {
        Ok((read_log_id, _applied)) => Ok(read_log_id.index()),
        Err(e) => Err(ApiError::from_read_barrier(id, e)),
    }
}

async fn remote_read_index(id: NodeId, leader: NodeId, addr: &str, peers: &PeerNetwork) -> Result<u64, ApiError> {
    let no_leader = |why: String| ApiError::NoLeader {
        this: id,
        detail: format!("node {id} could not get a read index from leader {leader} ({addr}): {why}"),
    };
    if peers.faults().is_blocked(leader) {
        return Err(no_leader("link cut (test fault injection)".into()));
    }
    let channel = peers.channel(peers.peer_addr(leader, addr)).map_err(no_leader)?;
    let mut request = tonic::Request::new(ReadIndexRequest { from: id });
    request.set_timeout(REMOTE_READ_INDEX_TIMEOUT);
    let mut client = RaftPeerClient::new(channel);
    match tokio::time::timeout(REMOTE_READ_INDEX_TIMEOUT, client.read_index(request)).await {
        Ok(Ok(r)) => Ok(r.into_inner().read_index),
        Ok(Err(status)) => {
            let kind = status
                .metadata()
                .get(metadata::ERROR_KIND)
                .and_then(|v| v.to_str().ok());
            match kind {
                Some(error_kind::NOT_LEADER) | Some(error_kind::NO_LEADER) => {
                    Err(no_leader(format!("it is no longer the leader ({})", status.message())))
                }
                _ => Err(no_leader(status.message().to_string())),
            }
        }
        Err(_) => Err(no_leader(format!("no answer within {REMOTE_READ_INDEX_TIMEOUT:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Reads arriving while a round is in flight wait for the next round, and one round serves
    /// them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_share_rounds_that_start_after_them() {
        let started = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(0u64);
        let batcher = {
            let started = started.clone();
            ReadIndexBatcher::new(1, move || {
                let round = started.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                let mut release = release_rx.clone();
                async move {
                    // Each round blocks until the test releases it, and answers its number.
                    let _ = release.wait_for(|r| *r >= round).await;
                    Ok(round * 100)
                }
            })
        };

        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.read_index().await }
        });
        crate_wait(|| started.load(Ordering::SeqCst) == 1).await;

        // Ten reads arrive while round 1 is in flight.
        let later: Vec<_> = (0..10)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.read_index().await })
            })
            .collect();
        crate_wait(|| batcher.requests() == 11).await;
        release_tx.send(1).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 100);

        // Round 2 starts for all ten; none of them was answered by round 1.
        crate_wait(|| started.load(Ordering::SeqCst) == 2).await;
        release_tx.send(2).unwrap();
        for r in later {
            assert_eq!(r.await.unwrap().unwrap(), 200);
        }
        assert_eq!(batcher.rounds(), 2);
        assert_eq!(batcher.requests(), 11);
    }

    async fn crate_wait(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "condition not reached");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
