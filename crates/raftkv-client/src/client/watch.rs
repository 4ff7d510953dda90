//! `Watcher`: a watch that outlives the node it is connected to.
//!
//! A watch is served by one node from its own applied state (`raftkv.v1.Watch`). The watcher
//! remembers the next revision it has to deliver; when its node dies, is paused, shuts down or
//! cancels the watch, it reconnects — to the other endpoints in turn, with backoff — asking for
//! exactly that revision on. Since every revision's changes arrive whole and in order, that
//! gives no gap and no duplicate. A node that no longer holds the revision answers
//! `OUT_OF_RANGE`; the watcher then tries the others, and only if none holds it returns
//! [`ClientError::Compacted`] (read the current state and watch again from its revision + 1).
//! Progress notifications move the resume point too, so an idle watcher resumes from where
//! the cluster was, not from its last event. The watcher always asks for them (and passes them
//! on only when [`WatchOptions::progress_notify`] is set): a node that sends nothing for
//! [`WATCH_SILENCE_LIMIT`] is taken for paused or cut off, and the watch moves to another.

use std::time::Duration;

use raftkv_proto::v1::watch_client::WatchClient;
use raftkv_proto::v1::watch_request::Request as WatchOp;
use raftkv_proto::v1::{Event, WatchCreateRequest, WatchRequest, WatchResponse};
use raftkv_proto::{error_kind, metadata};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Streaming};

use super::Client;
use crate::error::ClientError;
use crate::retry::Backoff;

/// A node that has sent nothing — not even a progress notification, which the watcher always
/// asks for — for this long is taken for gone (paused, cut off) and the watch moves on.
pub const WATCH_SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// Largest watch response accepted: one revision's changes always come in one response, and a
/// transaction or range delete can touch many keys.
const MAX_WATCH_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// What to watch, and how. Build with [`WatchOptions::key`], [`WatchOptions::prefix`] or
/// [`WatchOptions::range`], then the `with_*` / `from_revision` methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    pub key: Vec<u8>,
    pub end: Vec<u8>,
    pub prefix: bool,
    /// First revision to deliver; 0: from now on.
    pub start_revision: u64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    /// Ask for a progress notification after about a second without events.
    pub progress_notify: bool,
}

impl WatchOptions {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            ..Default::default()
        }
    }

    /// Every key starting with `prefix` (empty: every key).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            key: prefix.into(),
            prefix: true,
            ..Default::default()
        }
    }

    /// The keys in `[start, end)`.
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            key: start.into(),
            end: end.into(),
            ..Default::default()
        }
    }

    /// Deliver changes from `revision` on (they may already have happened).
    pub fn from_revision(mut self, revision: u64) -> Self {
        self.start_revision = revision;
        self
    }

    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

/// What [`Watcher::next`] returns: changes, or a progress notification (no events).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// Changes in revision order (empty for a progress notification).
    pub events: Vec<Event>,
    /// Every matching change up to this revision has now been delivered.
    pub revision: u64,
    /// The node that sent it.
    pub node_id: u64,
}

struct Connection {
    /// Kept so the request stream stays open (dropping it would end the watch).
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    addr: String,
}

/// A running watch; see the module docs. Get one from [`Client::watch`].
pub struct Watcher {
    client: Client,
    options: WatchOptions,
    /// The next revision to deliver (0 until the first node has said what "now" is).
    next: u64,
    conn: Option<Connection>,
    /// Where to start looking for a node when (re)connecting.
    turn: usize,
}

impl Client {
    /// Starts a watch and returns it. Successive watches of a client start on successive
    /// endpoints (each moves on if its node does not accept it), so they spread over the nodes.
    pub async fn watch(&self, options: WatchOptions) -> Result<Watcher, ClientError> {
        let turn = self
            .inner
            .next_watch_endpoint
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut watcher = Watcher {
            client: self.clone(),
            next: options.start_revision,
            options,
            conn: None,
            turn,
        };
        watcher.connect().await?;
        Ok(watcher)
    }
}

impl Watcher {
    /// The revision the next delivered change will have at least (what a reconnect asks for).
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The node the watch is connected to now, if any.
    pub fn node(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.addr.as_str())
    }

    /// The next changes (or progress notification), reconnecting as needed. An error is the
    /// watch's end only if it is [`ClientError::Compacted`] or a refusal of the request
    /// ([`ClientError::InvalidArgument`], permissions); after [`ClientError::Unavailable`]
    /// (no node reachable within the client's timeout) calling again keeps trying.
    pub async fn next(&mut self) -> Result<WatchBatch, ClientError> {
        loop {
            if self.conn.is_none() {
                self.connect().await?;
            }
            let Some(conn) = self.conn.as_mut() else { continue };
            let message = match tokio::time::timeout(WATCH_SILENCE_LIMIT, conn.responses.message()).await {
                Ok(message) => message,
                Err(_) => {
                    self.drop_connection();
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    if response.canceled {
                        // Fell behind on that node (or it cancelled us): resume elsewhere.
                        self.drop_connection();
                        continue;
                    }
                    if response.created {
                        continue;
                    }
                    let header = response.header.unwrap_or_default();
                    let events: Vec<Event> = response
                        .events
                        .into_iter()
                        .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= self.next))
                        .collect();
                    if events.is_empty() && (!self.options.progress_notify || header.revision + 1 < self.next) {
                        // A progress notification the caller did not ask for (the watcher
                        // asks for them to notice a silent node), or a lagging node's.
                        self.next = self.next.max(header.revision + 1);
                        continue;
                    }
                    self.next = self.next.max(header.revision + 1);
                    return Ok(WatchBatch {
                        events,
                        revision: header.revision,
                        node_id: header.node_id,
                    });
                }
                Ok(None) | Err(_) => self.drop_connection(),
            }
        }
    }

    /// Asks the node for a progress notification now (it arrives through [`Self::next`]).
    pub async fn request_progress(&mut self) -> Result<(), ClientError> {
        if let Some(conn) = &self.conn {
            let request = WatchRequest {
                request: Some(WatchOp::Progress(Default::default())),
            };
            if conn._requests.send(request).await.is_err() {
                self.drop_connection();
            }
        }
        Ok(())
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        self.turn += 1;
    }

    /// Opens the watch on some node, trying each endpoint in turn (with backoff between
    /// rounds) until one accepts or the client's timeout passes.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let config = self.client.config().clone();
        let deadline = Instant::now() + config.timeout;
        let mut backoff = Backoff::new(config.retry.backoff);
        let mut last_error = String::from("no endpoint was tried");
        loop {
            let endpoints = self.client.snapshot();
            if endpoints.is_empty() {
                return Err(ClientError::Config("no endpoints".into()));
            }
            let mut compacted: Option<(u64, String)> = None;
            let mut unreachable = 0;
            for i in 0..endpoints.len() {
                let endpoint = &endpoints[(self.turn + i) % endpoints.len()];
                let attempt = config
                    .attempt_timeout
                    .min(deadline.saturating_duration_since(Instant::now()));
                match self.open(endpoint.channel.clone(), &endpoint.spec.addr, attempt).await {
                    Ok((conn, created_at)) => {
                        self.turn = (self.turn + i) % endpoints.len();
                        if self.next == 0 {
                            // "From now on", as this node sees it: a reconnect resumes there.
                            self.next = created_at + 1;
                        }
                        self.conn = Some(conn);
                        return Ok(());
                    }
                    Err(Attempt::Compacted { oldest, message }) => {
                        let oldest_seen = compacted.as_ref().map_or(0, |c| c.0);
                        if oldest >= oldest_seen {
                            compacted = Some((oldest, message));
                        }
                    }
                    Err(Attempt::Final(e)) => return Err(e),
                    Err(Attempt::Retry(why)) => {
                        unreachable += 1;
                        last_error = format!("{}: {why}", endpoint.spec.addr);
                    }
                }
            }
            if let Some((oldest, message)) = compacted {
                // Every node answered, and none holds the revision any more.
                if unreachable == 0 {
                    return Err(ClientError::Compacted { oldest, message });
                }
                last_error = message;
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                return Err(ClientError::Unavailable(format!(
                    "no node accepted the watch from revision {} before the deadline; last error: {last_error}",
                    self.next
                )));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt at opening the watch on the node at `addr`; with the node's revision when
    /// it created the watch.
    async fn open(
        &self,
        channel: tonic::transport::Channel,
        addr: &str,
        timeout: Duration,
    ) -> Result<(Connection, u64), Attempt> {
        let (tx, rx) = mpsc::channel(4);
        let create = WatchCreateRequest {
            key: self.options.key.clone(),
            end: self.options.end.clone(),
            prefix: self.options.prefix,
            start_revision: self.next,
            prev_kv: self.options.prev_kv,
            no_put: self.options.no_put,
            no_delete: self.options.no_delete,
            watch_id: 1,
            // Always: they tell a silent node from a quiet key (WATCH_SILENCE_LIMIT).
            progress_notify: true,
        };
        tx.send(WatchRequest {
            request: Some(WatchOp::Create(create)),
        })
        .await
        .map_err(|_| Attempt::Retry("request stream closed".into()))?;
        let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let mut client = WatchClient::new(channel).max_decoding_message_size(MAX_WATCH_RESPONSE_BYTES);
        let opened = tokio::time::timeout(timeout, async {
            let mut responses = client.watch(self.client.request(requests)).await?.into_inner();
            let first = responses.message().await?;
            Ok::<_, tonic::Status>((responses, first))
        })
        .await;
        match opened {
            Err(_) => Err(Attempt::Retry(format!("no answer within {timeout:?}"))),
            Ok(Err(status)) => Err(classify(&status)),
            Ok(Ok((_, None))) => Err(Attempt::Retry("the node closed the watch".into())),
            Ok(Ok((responses, Some(first)))) if first.created => Ok((
                Connection {
                    _requests: tx,
                    responses,
                    addr: addr.to_string(),
                },
                first.header.map_or(0, |h| h.revision),
            )),
            Ok(Ok(_)) => Err(Attempt::Retry("the node answered the watch without creating it".into())),
        }
    }
}

/// How one attempt to open a watch failed.
enum Attempt {
    /// Try another node.
    Retry(String),
    /// This node no longer holds the revision; another may.
    Compacted { oldest: u64, message: String },
    /// Give up: the request itself is refused.
    Final(ClientError),
}

fn classify(status: &tonic::Status) -> Attempt {
    let kind = status
        .metadata()
        .get(metadata::ERROR_KIND)
        .and_then(|v| v.to_str().ok());
    match (status.code(), kind) {
        (Code::OutOfRange, Some(error_kind::COMPACTED)) => Attempt::Compacted {
            oldest: status
                .metadata()
                .get(metadata::OLDEST_REVISION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            message: status.message().to_string(),
        },
        (Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied, _) => {
            Attempt::Final(ClientError::from_status(status))
        }
        _ => Attempt::Retry(format!("{:?}: {}", status.code(), status.message())),
    }
}
