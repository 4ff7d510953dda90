//! `raftkv.v1.Watch`: streams the changes of this node's applied state to watchers.
//!
//! One task per stream ([`WatchSession`]) owns the stream's watches. It wakes when a request
//! arrives, when the store revision moves (the store's revision channel), when a progress tick
//! is due, or at shutdown; then it *pumps*: for each watch it reads the changes after the
//! watch's cursor from the store's watch history, keeps those that match the watch, and sends
//! them, whole revisions at a time, in revision order. Nothing is pushed to a watch: each one
//! pulls from the shared history, so a slow watcher costs the writers nothing and holds no
//! more than the stream's bounded send buffer; once the history has moved past its cursor it is
//! cancelled with the reason and the oldest revision still held.
//!
//! Every node serves watches from its own applied state, so a follower's watchers see a change
//! once that follower has applied it. A create that cannot be served ends the stream with a
//! status (`INVALID_ARGUMENT`, `OUT_OF_RANGE` for a start revision the history no longer
//! holds); the stream's other watches end with it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use raftkv_proto::v1::watch_request::Request as WatchOp;
use raftkv_proto::v1::watch_server::Watch;
use raftkv_proto::v1::{event, Event as PbEvent, WatchCreateRequest, WatchRequest, WatchResponse};
use raftkv_store::{prefix_end, Event, EventKind, HistoryError, StateReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::api::call::ApiCalls;
use crate::api::error::ApiError;
use crate::api::request::{invalid, to_pb, validate_bound};
use crate::consensus::core::NodeCore;

/// Responses a stream buffers for a client that does not read them; past it the session waits
/// (and a watch whose changes the history drops meanwhile is cancelled).
pub const STREAM_BUFFER: usize = 16;
/// Most changes read from the history per response (whole revisions, so one large
/// transaction can make a response larger).
pub const EVENTS_PER_RESPONSE: usize = 256;
/// A watch with `progress_notify` that has sent nothing for this long gets a progress
/// notification.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Most watches one stream may hold.
pub const MAX_WATCHES_PER_STREAM: usize = 4096;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

pub struct WatchService {
    core: NodeCore,
    calls: ApiCalls,
    shutdown: watch::Receiver<bool>,
}

impl WatchService {
    pub fn new(calls: ApiCalls, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            core: calls.core().clone(),
            calls,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        self.calls
            .serve("Watch", request, |request| async move {
                Ok(Response::new(self.open(Box::pin(request.into_inner()))))
            })
            .await
    }
}

/// The requests of one watch stream, from gRPC or from another API translated (etcd's).
pub type Inbound = Pin<Box<dyn Stream<Item = Result<WatchRequest, Status>> + Send + Sync>>;

impl WatchService {
    /// Starts a session serving the watch requests of `inbound`; returns its responses.
    pub fn open(&self, inbound: Inbound) -> WatchStream {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = WatchSession {
            core: self.core.clone(),
            reader: self.core.store.reader().clone(),
            inbound,
            tx,
            watches: BTreeMap::new(),
        };
        tokio::spawn(session.run(self.shutdown.clone()));
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        Box::pin(stream)
    }
}

/// Which keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keys {
    One(Vec<u8>),
    /// `[start, end)`; no end: every key from `start` on.
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl Keys {
    fn contains(&self, key: &[u8]) -> bool {
        match self {
            Keys::One(k) => k.as_slice() == key,
            Keys::Range { start, end } => key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice()),
        }
    }
}

/// One watch of a stream.
#[derive(Debug)]
struct WatchState {
    keys: Keys,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The next revision to report.
    next: u64,
    /// When it last sent anything (for progress notifications).
    last_sent: Instant,
}

impl WatchState {
    fn wants(&self, e: &Event) -> bool {
        let kind_ok = match e.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && self.keys.contains(&e.kv.key)
    }

    fn to_pb(&self, e: Event) -> PbEvent {
        PbEvent {
            r#type: match e.kind {
                EventKind::Put => event::EventType::Put as i32,
                EventKind::Delete => event::EventType::Delete as i32,
            },
            kv: Some(to_pb(e.kv)),
            prev_kv: if self.prev_kv { e.prev_kv.map(to_pb) } else { None },
        }
    }
}

/// Validates a create and turns it into a watch starting at `next`.
fn new_watch(c: &WatchCreateRequest, reader: &StateReader, this: u64) -> Result<WatchState, ApiError> {
    validate_bound(&c.key)?;
    validate_bound(&c.end)?;
    let keys = if c.prefix {
        if !c.end.is_empty() {
            return Err(invalid("give either prefix or end, not both"));
        }
        Keys::Range {
            start: c.key.clone(),
            end: prefix_end(&c.key),
        }
    } else if !c.end.is_empty() {
        if c.end <= c.key {
            return Err(invalid(
                "empty or inverted range: end must be greater than key (watch [key, end))",
            ));
        }
        Keys::Range {
            start: c.key.clone(),
            end: Some(c.end.clone()),
        }
    } else {
        if c.key.is_empty() {
            return Err(invalid(
                "key is empty; watch a key, a prefix (an empty prefix is every key), or [key, end)",
            ));
        }
        Keys::One(c.key.clone())
    };
    let next = match c.start_revision {
        0 => reader.revision() + 1,
        start => {
            let oldest = reader.oldest_watchable();
            if start < oldest {
                return Err(ApiError::Compacted {
                    this,
                    wanted: start,
                    oldest,
                });
            }
            start
        }
    };
    Ok(WatchState {
        keys,
        prev_kv: c.prev_kv,
        no_put: c.no_put,
        no_delete: c.no_delete,
        progress_notify: c.progress_notify,
        next,
        last_sent: Instant::now(),
    })
}

/// The watches of one stream (see the module docs).
struct WatchSession {
    core: NodeCore,
    reader: StateReader,
    inbound: Inbound,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watches: BTreeMap<u64, WatchState>,
}

/// Why a session ends.
enum End {
    /// The client closed its side or went away: nothing more to send.
    Quietly,
    /// End the stream with this status.
    With(Status),
}

impl WatchSession {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut revisions = self.reader.subscribe();
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let step = tokio::select! {
                message = self.inbound.next() => match message {
                    Some(Ok(request)) => self.handle(request).await,
                    None | Some(Err(_)) => Err(End::Quietly),
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => self.pump().await,
                    Err(_) => Err(End::With(ApiError::ShuttingDown(self.core.id).into())),
                },
                _ = tick.tick() => self.progress(false).await,
                _ = shutdown.changed() => Err(End::With(ApiError::ShuttingDown(self.core.id).into())),
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::With(status) = end {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    fn header(&self, revision: u64) -> raftkv_proto::v1::ResponseHeader {
        let mut header = self.core.header();
        header.revision = revision;
        header
    }

    async fn send(&self, response: WatchResponse) -> Result<(), End> {
        self.tx.send(Ok(response)).await.map_err(|_| End::Quietly)
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), End> {
        match request.request {
            Some(WatchOp::Create(create)) => {
                let watch = new_watch(&create, &self.reader, self.core.id).map_err(|e| End::With(e.into()))?;
                if self.watches.len() >= MAX_WATCHES_PER_STREAM {
                    return Err(End::With(
                        invalid(format!(
                            "a stream holds at most {MAX_WATCHES_PER_STREAM} watches; open another stream"
                        ))
                        .into(),
                    ));
                }
                let id = match create.watch_id {
                    0 => self.watches.keys().next_back().map_or(1, |last| last + 1),
                    id if self.watches.contains_key(&id) => {
                        return Err(End::With(
                            invalid(format!("watch id {id} is already in use on this stream")).into(),
                        ))
                    }
                    id => id,
                };
                let revision = self.reader.revision();
                self.watches.insert(id, watch);
                self.send(WatchResponse {
                    header: Some(self.header(revision)),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await?;
                self.pump().await
            }
            Some(WatchOp::Cancel(cancel)) => {
                self.watches.remove(&cancel.watch_id);
                self.send(WatchResponse {
                    header: Some(self.header(self.reader.revision())),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    cancel_reason: "cancelled by the client".into(),
                    ..Default::default()
                })
                .await
            }
            Some(WatchOp::Progress(_)) => {
                self.pump().await?;
                self.progress(true).await
            }
            None => Ok(()),
        }
    }

    /// Sends every watch the changes it has not seen yet.
    async fn pump(&mut self) -> Result<(), End> {
        let ids: Vec<u64> = self.watches.keys().copied().collect();
        for id in ids {
            while let Some(watch) = self.watches.get(&id) {
                match self.reader.changes_since(watch.next, EVENTS_PER_RESPONSE) {
                    Err(HistoryError::Compacted { wanted, oldest }) => {
                        self.watches.remove(&id);
                        self.send(WatchResponse {
                            header: Some(self.header(self.reader.revision())),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: format!(
                                "the watch fell behind: node {} no longer holds revision {wanted} (its watch \
                                 history starts at {oldest}); read the current state and watch again, or raise \
                                 --watch-history",
                                self.core.id
                            ),
                            compact_revision: oldest,
                            ..Default::default()
                        })
                        .await?;
                        break;
                    }
                    Ok(read) => {
                        let events: Vec<PbEvent> = read
                            .events
                            .into_iter()
                            .filter(|e| watch.wants(e))
                            .map(|e| watch.to_pb(e))
                            .collect();
                        let found = !events.is_empty();
                        if found {
                            let response = WatchResponse {
                                header: Some(self.header(read.seen_up_to)),
                                watch_id: id,
                                events,
                                ..Default::default()
                            };
                            self.send(response).await?;
                        }
                        if let Some(watch) = self.watches.get_mut(&id) {
                            watch.next = read.seen_up_to + 1;
                            if found {
                                watch.last_sent = Instant::now();
                            }
                        }
                        if !read.more {
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Progress notifications: to every watch (`all`, asked for by the client), or to the
    /// watches that want them and have been idle for [`PROGRESS_INTERVAL`].
    async fn progress(&mut self, all: bool) -> Result<(), End> {
        let now = Instant::now();
        let due: Vec<(u64, u64)> = self
            .watches
            .iter()
            .filter(|(_, w)| all || (w.progress_notify && now.duration_since(w.last_sent) >= PROGRESS_INTERVAL))
            .map(|(id, w)| (*id, w.next - 1))
            .collect();
        for (id, seen_up_to) in due {
            self.send(WatchResponse {
                header: Some(self.header(seen_up_to)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
            if let Some(w) = self.watches.get_mut(&id) {
                w.last_sent = now;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_match_what_they_say() {
        let one = Keys::One(b"a".to_vec());
        assert!(one.contains(b"a") && !one.contains(b"ab"));
        let prefix = Keys::Range {
            start: b"a/".to_vec(),
            end: prefix_end(b"a/"),
        };
        assert!(prefix.contains(b"a/") && prefix.contains(b"a/z") && !prefix.contains(b"a0") && !prefix.contains(b"a"));
        let all = Keys::Range {
            start: Vec::new(),
            end: None,
        };
        assert!(all.contains(b"") && all.contains(&[0xff, 0xff]));
    }
}
