//! `Client`: a raftkv client over a list of endpoints.
//!
//! Every call has a deadline ([`ClientConfig::timeout`] unless overridden), sent to the server
//! as the gRPC timeout and enforced locally. Within it the client:
//! - sends writes to the leader it knows of, following `raftkv-leader-addr` hints, and finds
//!   the leader by asking every endpoint's Status when it has no hint;
//! - spreads reads (linearizable or stale) over the endpoints in turn: any node can serve them;
//! - retries what certainly did not happen (not the leader, no leader, connection refused)
//!   with exponential backoff and jitter, on the next candidate endpoint;
//! - never retries a write whose outcome is unknown: it returns
//!   [`ClientError::Indeterminate`] instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::kv_client::KvClient;
use raftkv_proto::v1::{
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, Role, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use raftkv_proto::{error_kind, metadata};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::ClientError;
use crate::retry::{Backoff, BackoffPolicy};
use crate::txn;

/// The client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client API addresses (`host:port`) of some or all nodes.
    pub endpoints: Vec<String>,
    /// Deadline of each call, retries included.
    pub timeout: Duration,
    /// How long opening a connection to one endpoint may take.
    pub connect_timeout: Duration,
    /// Delays between retries.
    pub backoff: BackoffPolicy,
}

/// The local three-node cluster started by `scripts/cluster.sh up`.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            backoff: BackoffPolicy::default(),
        }
    }

    /// Parses a comma-separated endpoint list such as [`DEFAULT_ENDPOINTS`].
    pub fn from_list(list: &str) -> Self {
        Self::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        )
    }

    pub fn validate(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        for e in &self.endpoints {
            if e.contains("://") || !e.contains(':') {
                return Err(ClientError::Config(format!(
                    "endpoint {e:?} is not HOST:PORT (e.g. 127.0.0.1:7001)"
                )));
            }
        }
        if self.timeout.is_zero() {
            return Err(ClientError::Config("timeout must be positive".into()));
        }
        Ok(())
    }
}

/// What the client knows of one node, as `Client::cluster_status` reports it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node's id, when it answered or is listed in the membership.
    pub id: Option<u64>,
    /// The client address the report is for.
    pub addr: String,
    /// Its status, or why it could not be had.
    pub status: Result<StatusResponse, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallKind {
    Write,
    LinearizableRead,
    StaleRead,
}

impl CallKind {
    fn for_read(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Stale => Self::StaleRead,
            Consistency::Linearizable | Consistency::Unspecified => Self::LinearizableRead,
        }
    }

    /// Writes go to the leader; reads of either kind are served by any node (a follower gets a
    /// read index from the leader for a linearizable read), so they are spread over endpoints.
    fn wants_leader(self) -> bool {
        matches!(self, Self::Write)
    }
}

/// How one failed attempt bears on the call.
enum Failure {
    /// Certainly not applied; try elsewhere.
    NotStarted(String),
    /// Not applied; the leader is at `addr`.
    Redirect { addr: String, message: String },
    /// May have been applied.
    Unknown(String),
    /// Retrying cannot help.
    Final(ClientError),
}

fn is_connect_error(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

fn classify(status: &Status) -> Failure {
    let md = status.metadata();
    let kind = md.get(metadata::ERROR_KIND).and_then(|v| v.to_str().ok());
    let message = format!("{}: {}", describe_code(status.code()), status.message());
    match kind {
        Some(error_kind::NOT_LEADER) => match md.get(metadata::LEADER_ADDR).and_then(|v| v.to_str().ok()) {
            Some(addr) => Failure::Redirect {
                addr: addr.to_string(),
                message,
            },
            None => Failure::NotStarted(message),
        },
        Some(error_kind::NO_LEADER) | Some(error_kind::SHUTTING_DOWN) => Failure::NotStarted(message),
        Some(error_kind::INDETERMINATE) => Failure::Unknown(message),
        _ => match status.code() {
            Code::Unavailable if is_connect_error(status) => Failure::NotStarted(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                Failure::Unknown(message)
            }
            _ => Failure::Final(ClientError::from_status(status)),
        },
    }
}

fn describe_code(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Cancelled => "cancelled",
        _ => "error",
    }
}

/// Largest reply the client accepts (the server keeps Range replies near 3 MiB; a Get of a
/// maximal value is 1 MiB).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES)
}

struct Inner {
    config: ClientConfig,
    channels: RwLock<BTreeMap<String, Channel>>,
    order: RwLock<Vec<String>>,
    leader: Mutex<Option<String>>,
    next: Mutex<usize>,
}

/// A raftkv client. Cheap to clone; clones share connections and leader knowledge.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Creates a client. Connections are opened lazily, on first use.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let client = Self {
            inner: Arc::new(Inner {
                order: RwLock::new(Vec::new()),
                channels: RwLock::new(BTreeMap::new()),
                leader: Mutex::new(None),
                next: Mutex::new(0),
                config,
            }),
        };
        for e in client.inner.config.endpoints.clone() {
            client.channel(&e)?;
        }
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The leader's address as last learned, if any.
    pub fn known_leader(&self) -> Option<String> {
        self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    fn endpoints(&self) -> Vec<String> {
        self.inner.order.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The channel to `addr`, created (and `addr` added to the endpoints) on first use.
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(c) = self.inner.channels.read().unwrap_or_else(|e| e.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::Config(format!("endpoint {addr:?}: {e}")))?
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        let mut channels = self.inner.channels.write().unwrap_or_else(|e| e.into_inner());
        if !channels.contains_key(addr) {
            channels.insert(addr.to_string(), channel);
            self.inner
                .order
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(addr.to_string());
        }
        Ok(channels[addr].clone())
    }

    fn next_endpoint(&self) -> String {
        let order = self.endpoints();
        let mut next = self.inner.next.lock().unwrap_or_else(|e| e.into_inner());
        let addr = order[*next % order.len()].clone();
        *next = next.wrapping_add(1);
        addr
    }

    /// Runs one call with retries until it succeeds, fails for good, or the deadline passes.
    async fn call<Req, Resp, F, Fut>(
        &self,
        kind: CallKind,
        timeout: Option<Duration>,
        req: Req,
        send: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + timeout.unwrap_or(self.inner.config.timeout);
        let mut backoff = Backoff::new(self.inner.config.backoff);
        let mut last_error = String::from("no attempt was made");
        let mut redirect: Option<String> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Unavailable(format!(
                    "deadline passed; last error: {last_error}"
                )));
            }
            let target = match redirect.take() {
                Some(addr) => addr,
                None if kind.wants_leader() => match self.known_leader() {
                    Some(l) => l,
                    None => match self.discover_leader(deadline).await {
                        Some(l) => l,
                        None => self.next_endpoint(),
                    },
                },
                None => self.next_endpoint(),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                continue;
            }
            let channel = self.channel(&target)?;
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(remaining);
            let outcome = tokio::time::timeout(remaining, send(channel, request)).await;
            let failure = match outcome {
                Ok(Ok(resp)) => {
                    if kind.wants_leader() {
                        self.set_leader(Some(target));
                    }
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => classify(&status),
                Err(_) => Failure::Unknown(format!("no reply from {target} before the deadline")),
            };
            match failure {
                Failure::Final(e) => return Err(e),
                Failure::Unknown(msg) => {
                    if kind == CallKind::Write {
                        self.forget_leader(&target);
                        return Err(ClientError::Indeterminate(format!("{target}: {msg}")));
                    }
                    self.forget_leader(&target);
                    last_error = format!("{target}: {msg}");
                    self.pause(&mut backoff, deadline).await;
                }
                Failure::Redirect { addr, message } => {
                    last_error = format!("{target}: {message}");
                    if addr == target {
                        // A stale hint pointing back at the node that gave it.
                        self.set_leader(None);
                        self.pause(&mut backoff, deadline).await;
                    } else {
                        tracing::debug!(from = %target, to = %addr, "following leader hint");
                        self.set_leader(Some(addr.clone()));
                        redirect = Some(addr);
                    }
                }
                Failure::NotStarted(msg) => {
                    self.forget_leader(&target);
                    last_error = format!("{target}: {msg}");
                    self.pause(&mut backoff, deadline).await;
                }
            }
        }
    }

    fn forget_leader(&self, addr: &str) {
        let mut leader = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    async fn pause(&self, backoff: &mut Backoff, deadline: Instant) {
        let delay = backoff.next_delay();
        tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
    }

    /// Asks every endpoint for its status and returns the client address of the leader with
    /// the highest term, if any node knows one.
    async fn discover_leader(&self, deadline: Instant) -> Option<String> {
        let probe_timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        let statuses = self.probe_all(&self.endpoints(), probe_timeout).await;
        let best = statuses
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .filter(|s| !s.leader_addr.is_empty())
            .max_by_key(|s| (s.term, s.role == Role::Leader as i32))?;
        let addr = best.leader_addr;
        self.set_leader(Some(addr.clone()));
        Some(addr)
    }

    async fn probe_all(&self, addrs: &[String], timeout: Duration) -> Vec<(String, Result<StatusResponse, String>)> {
        let probes = addrs.iter().map(|addr| {
            let addr = addr.clone();
            async move {
                let result = self.status_of(&addr, timeout).await.map_err(|e| e.to_string());
                (addr, result)
            }
        });
        futures::future::join_all(probes).await
    }

    /// The status of the node at `addr` (one attempt, no retries).
    pub async fn status_of(&self, addr: &str, timeout: Duration) -> Result<StatusResponse, ClientError> {
        let channel = self.channel(addr)?;
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, ClusterClient::new(channel).status(request)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == Code::Unavailable => {
                Err(ClientError::Unavailable(format!("{addr}: {}", s.message())))
            }
            Ok(Err(s)) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                Err(ClientError::Unavailable(format!("{addr}: no reply within {timeout:?}")))
            }
            Ok(Err(s)) => Err(ClientError::from_status(&s)),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: no reply within {timeout:?}"))),
        }
    }

    /// The status of every node the client can learn of: its endpoints, plus every member they
    /// report. Nodes that do not answer are included with the reason.
    pub async fn cluster_status(&self) -> Vec<NodeReport> {
        let timeout = self.inner.config.timeout.min(Duration::from_secs(2));
        let mut results: BTreeMap<String, Result<StatusResponse, String>> =
            self.probe_all(&self.endpoints(), timeout).await.into_iter().collect();
        // Members as reported by the answering node with the highest term.
        let members = results
            .values()
            .filter_map(|r| r.as_ref().ok())
            .max_by_key(|s| (s.term, s.role == Role::Leader as i32))
            .map(|s| s.members.clone())
            .unwrap_or_default();
        let missing: Vec<String> = members
            .iter()
            .map(|m| m.client_addr.clone())
            .filter(|a| !a.is_empty() && !results.contains_key(a))
            .collect();
        results.extend(self.probe_all(&missing, timeout).await);
        let mut reports: Vec<NodeReport> = results
            .into_iter()
            .map(|(addr, status)| {
                let id = match &status {
                    Ok(s) => Some(s.id),
                    Err(_) => members.iter().find(|m| m.client_addr == addr).map(|m| m.id),
                };
                NodeReport { id, addr, status }
            })
            .collect();
        reports.sort_by_key(|r| (r.id.is_none(), r.id, r.addr.clone()));
        reports
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse, ClientError> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
        };
        self.put_request(req, None).await
    }

    /// Sends a full PutRequest, with an optional deadline overriding the configured one.
    pub async fn put_request(&self, req: PutRequest, timeout: Option<Duration>) -> Result<PutResponse, ClientError> {
        self.call(CallKind::Write, timeout, req, |ch, r| async move {
            kv_client(ch).put(r).await
        })
        .await
    }

    /// Reads `key` linearizably.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<GetResponse, ClientError> {
        self.get_with(key, Consistency::Linearizable, None).await
    }

    /// Reads `key` at the given consistency, with an optional deadline.
    pub async fn get_with(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
        timeout: Option<Duration>,
    ) -> Result<GetResponse, ClientError> {
        let req = GetRequest {
            key: key.into(),
            consistency: consistency as i32,
        };
        self.call(CallKind::for_read(consistency), timeout, req, |ch, r| async move {
            kv_client(ch).get(r).await
        })
        .await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResponse, ClientError> {
        let req = DeleteRequest {
            key: key.into(),
            ..Default::default()
        };
        self.delete_request(req, None).await
    }

    /// Sends a full DeleteRequest, with an optional deadline.
    pub async fn delete_request(
        &self,
        req: DeleteRequest,
        timeout: Option<Duration>,
    ) -> Result<DeleteResponse, ClientError> {
        self.call(CallKind::Write, timeout, req, |ch, r| async move {
            kv_client(ch).delete(r).await
        })
        .await
    }

    /// Reads a range of keys; the consistency is the request's.
    pub async fn range(&self, req: RangeRequest, timeout: Option<Duration>) -> Result<RangeResponse, ClientError> {
        let consistency = Consistency::try_from(req.consistency).unwrap_or(Consistency::Linearizable);
        self.call(CallKind::for_read(consistency), timeout, req, |ch, r| async move {
            kv_client(ch).range(r).await
        })
        .await
    }

    /// Sets `key` to `new` only if its value is `expected`. `succeeded` in the reply tells
    /// whether it did; if not, the reply's single response holds the current key-value.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: impl Into<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<TxnResponse, ClientError> {
        let key = key.into();
        let req = TxnRequest {
            compare: vec![txn::value(key.clone(), txn::Op::Equal, expected)],
            success: vec![txn::put(key.clone(), new)],
            failure: vec![txn::get(key)],
        };
        self.txn(req, None).await
    }

    /// Creates `key` with `value` only if it does not exist yet (`succeeded` says whether).
    pub async fn put_if_absent(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<TxnResponse, ClientError> {
        let key = key.into();
        let req = TxnRequest {
            compare: vec![txn::missing(key.clone())],
            success: vec![txn::put(key.clone(), value)],
            failure: vec![txn::get(key)],
        };
        self.txn(req, None).await
    }

    /// Runs a transaction (compares, then the success or failure operations), atomically.
    pub async fn txn(&self, req: TxnRequest, timeout: Option<Duration>) -> Result<TxnResponse, ClientError> {
        self.call(CallKind::Write, timeout, req, |ch, r| async move {
            kv_client(ch).txn(r).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status_with(code: Code, kind: Option<&'static str>, leader: Option<&'static str>) -> Status {
        let mut s = Status::new(code, "x");
        if let Some(k) = kind {
            s.metadata_mut()
                .insert(metadata::ERROR_KIND, MetadataValue::from_static(k));
        }
        if let Some(l) = leader {
            s.metadata_mut()
                .insert(metadata::LEADER_ADDR, MetadataValue::from_static(l));
        }
        s
    }

    #[test]
    fn classification_separates_safe_retries_from_unknown_outcomes() {
        let redirect = status_with(Code::Unavailable, Some(error_kind::NOT_LEADER), Some("127.0.0.1:7002"));
        assert!(matches!(classify(&redirect), Failure::Redirect { addr, .. } if addr == "127.0.0.1:7002"));
        let no_leader = status_with(Code::Unavailable, Some(error_kind::NO_LEADER), None);
        assert!(matches!(classify(&no_leader), Failure::NotStarted(_)));
        let indeterminate = status_with(Code::Unavailable, Some(error_kind::INDETERMINATE), None);
        assert!(matches!(classify(&indeterminate), Failure::Unknown(_)));
        // A transport failure without our metadata, not at connect time: unknown outcome.
        let broken = status_with(Code::Unavailable, None, None);
        assert!(matches!(classify(&broken), Failure::Unknown(_)));
        assert!(matches!(
            classify(&status_with(Code::DeadlineExceeded, None, None)),
            Failure::Unknown(_)
        ));
        assert!(matches!(
            classify(&status_with(Code::InvalidArgument, None, None)),
            Failure::Final(ClientError::InvalidArgument(_))
        ));
    }

    #[test]
    fn config_validation() {
        assert!(ClientConfig::from_list(DEFAULT_ENDPOINTS).validate().is_ok());
        assert_eq!(ClientConfig::from_list(" a:1 , b:2 ,").endpoints, vec!["a:1", "b:2"]);
        assert!(ClientConfig::from_list("").validate().is_err());
        assert!(ClientConfig::from_list("http://a:1").validate().is_err());
        assert!(ClientConfig::from_list("nohostport").validate().is_err());
    }

    #[tokio::test]
    async fn a_write_to_nothing_listening_is_unavailable_not_indeterminate() {
        // Bind then drop a listener to get a loopback port with nothing behind it.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut config = ClientConfig::new([addr]);
        config.timeout = Duration::from_millis(300);
        let client = Client::new(config).unwrap();
        let err = client.put("k", "v").await.unwrap_err();
        assert!(matches!(err, ClientError::Unavailable(_)), "{err}");
    }
}
