//! `Client`: a raftkv client over a list of endpoints, carrying the fault-tolerance toolkit.
//!
//! Every call has a deadline ([`ClientConfig::timeout`] unless overridden), sent to the server
//! as the gRPC timeout and enforced locally; each attempt within it has its own, shorter,
//! timeout ([`ClientConfig::attempt_timeout`]) so a frozen node cannot eat the whole deadline.
//! Within the deadline the client:
//! - sends writes to the leader it knows of, following `raftkv-leader-addr` hints, and finds
//!   the leader by asking every endpoint's Status when it has no hint. When the leader it knew
//!   stops answering (or nobody knows a leader), it polls the endpoints' Status every
//!   [`LEADER_POLL_INTERVAL`] until a new leader shows up, ignoring nodes that still name the
//!   lost one, instead of backing off: a failover is over the moment an election is, not a
//!   backoff step later. One call polls for all the calls of a client;
//! - spreads reads (linearizable or stale) over the endpoints by smooth weighted round robin,
//!   skipping endpoints whose circuit breaker is open and using backups only when no primary
//!   is usable;
//! - numbers its writes (client id, seq) so a retried write applies once: with that, every
//!   write can be retried; without it (`exactly_once = false`) a write whose outcome is unknown
//!   is returned as [`ClientError::Indeterminate`] at once;
//! - retries with exponential backoff and full jitter, up to `retry.max_attempts`;
//! - can fall back to a stale read, clearly marked, when a linearizable one cannot be had
//!   ([`ReadOptions::allow_degraded`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::kv_client::KvClient;
use raftkv_proto::v1::{
    AddMemberRequest, BackupChunk, BackupRequest, Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse,
    ListMembersRequest, MembersResponse, PromoteMemberRequest, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RemoveMemberRequest, Role, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse,
};
use raftkv_proto::{error_kind, metadata};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::balancer::SmoothWeightedRoundRobin;
use crate::breaker::CircuitBreaker;
use crate::config::{ClientConfig, EndpointSpec};
use crate::error::ClientError;
use crate::retry::Backoff;
use crate::session::{SeqTicket, WriteSequence};
use crate::txn;

/// Largest reply the client accepts (the server keeps Range replies near 3 MiB; a Get of a
/// maximal value is 1 MiB).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES)
}

/// What the client knows of one node, as [`Client::cluster_status`] reports it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node's id, when it answered or is listed in the membership.
    pub id: Option<u64>,
    /// The client address the report is for.
    pub addr: String,
    /// Its status, or why it could not be had.
    pub status: Result<StatusResponse, String>,
    /// How long the Status call took.
    pub latency: Option<Duration>,
    /// The client's view of the endpoint (breaker, counters), if it is one of its endpoints.
    pub endpoint: Option<EndpointReport>,
}

/// The client's view of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// How many times the breaker changed state.
    pub breaker_transitions: u64,
    /// Attempts sent, and those that failed at the transport level or timed out.
    pub calls: u64,
    pub failures: u64,
    /// Moving average of successful attempts' latency.
    pub latency: Option<Duration>,
}

/// How a read is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    pub consistency: Consistency,
    /// Overrides the configured deadline.
    pub timeout: Option<Duration>,
    /// When a linearizable read cannot be had in time (no quorum, no leader), answer with a
    /// stale read instead of an error, marked `degraded`. Off by default.
    pub allow_degraded: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            consistency: Consistency::Linearizable,
            timeout: None,
            allow_degraded: false,
        }
    }
}

/// A read's answer, and whether it is a degraded (stale) substitute for a linearizable read.
#[derive(Debug, Clone, PartialEq)]
pub struct Read<T> {
    pub response: T,
    /// True when a linearizable read was asked for but this answer is a stale read; its
    /// header's `revision` and `node_id` tell how fresh it is and who gave it.
    pub degraded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallKind {
    Write,
    Read,
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

fn describe_code(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Cancelled => "cancelled",
        _ => "error",
    }
}

/// Sorts a failed attempt, and says whether it counts against the endpoint's breaker (only
/// transport failures and timeouts do: any answer from the server means the node is alive).
fn classify(status: &Status) -> (Failure, bool) {
    let md = status.metadata();
    let kind = md.get(metadata::ERROR_KIND).and_then(|v| v.to_str().ok());
    let message = format!("{}: {}", describe_code(status.code()), status.message());
    match kind {
        Some(error_kind::NOT_LEADER) => match md.get(metadata::LEADER_ADDR).and_then(|v| v.to_str().ok()) {
            Some(addr) => (
                Failure::Redirect {
                    addr: addr.to_string(),
                    message,
                },
                false,
            ),
            None => (Failure::NotStarted(message), false),
        },
        Some(error_kind::NO_LEADER) | Some(error_kind::SHUTTING_DOWN) | Some(error_kind::REMOVED) => {
            (Failure::NotStarted(message), false)
        }
        Some(error_kind::INDETERMINATE) => (Failure::Unknown(message), false),
        // Refused before it started: back off, and try elsewhere.
        Some(error_kind::OVERLOADED) => (Failure::NotStarted(message), false),
        // The per-connection call limit (gRPC's own load shedding, no raftkv kind): the same.
        None if status.code() == Code::ResourceExhausted && status.message().contains("Too many active requests") => {
            (Failure::NotStarted(message), false)
        }
        _ => match status.code() {
            Code::Unavailable if is_connect_error(status) => (Failure::NotStarted(message), true),
            // A plaintext client talking to a TLS port fails HTTP/2 framing before the call
            // starts.
            Code::Internal if status.message().contains("h2 protocol error") => (Failure::NotStarted(message), true),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                (Failure::Unknown(message), true)
            }
            _ => (Failure::Final(ClientError::from_status(status)), false),
        },
    }
}

#[derive(Debug, Default)]
struct EndpointStats {
    calls: u64,
    failures: u64,
    latency_ewma_us: Option<f64>,
}

struct EndpointState {
    spec: EndpointSpec,
    channel: Channel,
    breaker: Mutex<CircuitBreaker>,
    stats: Mutex<EndpointStats>,
}

impl EndpointState {
    fn would_allow(&self, now: Instant) -> bool {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner()).would_allow(now)
    }

    fn try_acquire(&self, now: Instant) -> bool {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner()).try_acquire(now)
    }

    /// Records an attempt's outcome in the breaker (`failed`: transport failure or timeout)
    /// and in the counters.
    fn record(&self, failed: bool, elapsed: Duration) {
        let now = Instant::now();
        let change = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, !failed);
        if let Some(state) = change {
            tracing::info!(endpoint = %self.spec.addr, breaker = state.name(), "circuit breaker changed state");
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.calls += 1;
        if failed {
            stats.failures += 1;
        } else {
            let us = elapsed.as_micros() as f64;
            stats.latency_ewma_us = Some(stats.latency_ewma_us.map_or(us, |avg| 0.8 * avg + 0.2 * us));
        }
    }

    fn report(&self) -> EndpointReport {
        let (breaker, transitions) = {
            let b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            (b.state(Instant::now()).name(), b.transitions())
        };
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        EndpointReport {
            addr: self.spec.addr.clone(),
            weight: self.spec.weight,
            backup: self.spec.backup,
            breaker,
            breaker_transitions: transitions,
            calls: stats.calls,
            failures: stats.failures,
            latency: stats.latency_ewma_us.map(|us| Duration::from_micros(us as u64)),
        }
    }
}

struct Inner {
    config: ClientConfig,
    endpoints: RwLock<Vec<Arc<EndpointState>>>,
    balancer: Mutex<SmoothWeightedRoundRobin>,
    leader: Mutex<Option<String>>,
    /// The leader that last stopped answering, and when: other nodes keep naming it until
    /// their leader lease runs out, and those hints are not worth following.
    lost_leader: Mutex<Option<(String, Instant)>>,
    /// Held by the one call that is polling for a new leader; the others wait for its answer.
    discovery: tokio::sync::Mutex<()>,
    sequence: Arc<WriteSequence>,
    /// `Bearer TOKEN`, sent with every call when the config has a token.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// How often a client polls the endpoints' Status while it waits for a new leader.
pub const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long one search for a leader polls before the call falls back to backoff.
const LEADER_POLL_LIMIT: Duration = Duration::from_secs(2);
/// How long a leader that stopped answering is distrusted in other nodes' hints.
const LOST_LEADER_MEMORY: Duration = Duration::from_secs(3);

/// A raftkv client. Cheap to clone; clones share connections, breakers, leader knowledge and
/// the write sequence.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Creates a client. Connections are opened lazily, on first use.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let client_id = config.client_id.unwrap_or_else(|| rand::random::<u64>() | 1);
        let authorization = match &config.token {
            Some(t) => Some(
                MetadataValue::try_from(metadata::bearer(t.expose()))
                    .map_err(|_| ClientError::Config("the token is not valid gRPC metadata".into()))?,
            ),
            None => None,
        };
        let client = Self {
            inner: Arc::new(Inner {
                endpoints: RwLock::new(Vec::new()),
                balancer: Mutex::new(SmoothWeightedRoundRobin::default()),
                leader: Mutex::new(None),
                lost_leader: Mutex::new(None),
                discovery: tokio::sync::Mutex::new(()),
                sequence: WriteSequence::new(client_id),
                authorization,
                config,
            }),
        };
        for spec in client.inner.config.endpoints.clone() {
            client.add_endpoint(spec)?;
        }
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The id this client's exactly-once writes carry.
    pub fn client_id(&self) -> u64 {
        self.inner.sequence.client_id
    }

    /// The leader's address as last learned, if any.
    pub fn known_leader(&self) -> Option<String> {
        self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    fn forget_leader(&self, addr: &str) {
        let mut leader = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    /// The leader at `addr` refused a connection (its process is gone): forget it, and
    /// distrust hints naming it for a while. A reply lost mid-call is not enough: the node may
    /// well be alive.
    fn leader_lost(&self, addr: &str) {
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
    fn is_lost_leader(&self, addr: &str) -> bool {
        match &*self.inner.lost_leader.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((lost, at)) => lost == addr && at.elapsed() < LOST_LEADER_MEMORY,
            None => false,
        }
    }

    /// The client's view of each of its endpoints.
    pub fn endpoints(&self) -> Vec<EndpointReport> {
        self.snapshot().iter().map(|e| e.report()).collect()
    }

    fn snapshot(&self) -> Vec<Arc<EndpointState>> {
        self.inner.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add_endpoint(&self, spec: EndpointSpec) -> Result<Arc<EndpointState>, ClientError> {
        let mut endpoints = self.inner.endpoints.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = endpoints.iter().find(|e| e.spec.addr == spec.addr) {
            return Ok(e.clone());
        }
        let tls = &self.inner.config.tls;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", spec.addr))
            .map_err(|e| ClientError::Config(format!("endpoint {:?}: {e}", spec.addr)))?;
        if let Some(tls) = tls {
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| ClientError::Config(format!("TLS for {}: {e}", spec.addr)))?;
        }
        let channel = endpoint
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let state = Arc::new(EndpointState {
            spec,
            channel,
            breaker: Mutex::new(CircuitBreaker::new(self.inner.config.breaker)),
            stats: Mutex::new(EndpointStats::default()),
        });
        endpoints.push(state.clone());
        Ok(state)
    }

    /// The endpoint for `addr`, added (as a primary of weight 1) if it is new — leader hints
    /// may name nodes the caller did not list.
    fn endpoint(&self, addr: &str) -> Result<Arc<EndpointState>, ClientError> {
        if let Some(e) = self.snapshot().into_iter().find(|e| e.spec.addr == addr) {
            return Ok(e);
        }
        self.add_endpoint(EndpointSpec::new(addr))
    }

    /// Picks an endpoint for a read: smooth weighted round robin over the primaries whose
    /// breaker lets calls through, or over the usable backups when no primary is.
    fn pick_for_read(&self, now: Instant) -> Option<Arc<EndpointState>> {
        let endpoints = self.snapshot();
        let usable = |backup: bool| -> Vec<(usize, u32)> {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.spec.backup == backup && e.would_allow(now))
                .map(|(i, e)| (i, e.spec.weight))
                .collect()
        };
        let mut candidates = usable(false);
        if candidates.is_empty() {
            candidates = usable(true);
        }
        let chosen = self
            .inner
            .balancer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(&candidates)?;
        endpoints.get(chosen).cloned()
    }

    /// Runs one call with retries until it succeeds, fails for good, or the deadline or the
    /// attempt budget runs out.
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
        let config = &self.inner.config;
        let deadline = Instant::now() + timeout.unwrap_or(config.timeout);
        let ticket: Option<SeqTicket> =
            (kind == CallKind::Write && config.exactly_once).then(|| self.inner.sequence.begin());
        let mut backoff = Backoff::new(config.retry.backoff);
        let mut last_error = String::from("no attempt was made");
        let mut outcome_unknown = false;
        let mut redirect: Option<String> = None;
        let mut attempts = 0;
        let request_id = MetadataValue::try_from(format!("{:016x}", rand::random::<u64>()))
            .map_err(|e| ClientError::Config(format!("request id: {e}")))?;
        loop {
            if Instant::now() >= deadline || attempts >= config.retry.max_attempts {
                let why = if attempts >= config.retry.max_attempts {
                    format!("gave up after {attempts} attempts")
                } else {
                    "deadline passed".to_string()
                };
                // Plaintext against a TLS port fails as a bare transport error: say what to try.
                if config.tls.is_none()
                    && (last_error.contains("transport error") || last_error.contains("h2 protocol"))
                {
                    last_error.push_str(
                        " (if the cluster serves TLS, give the client its CA: --cacert or ClientConfig::tls)",
                    );
                }
                return Err(if outcome_unknown {
                    ClientError::Indeterminate(format!("{why}; last error: {last_error}"))
                } else {
                    ClientError::Unavailable(format!("{why}; last error: {last_error}"))
                });
            }
            let target = match (kind, redirect.take()) {
                (_, Some(addr)) => Some(self.endpoint(&addr)?),
                (CallKind::Write, None) => {
                    let leader = match self.known_leader() {
                        Some(l) => Some(l),
                        None => self.await_leader(deadline).await,
                    };
                    match leader {
                        Some(l) => Some(self.endpoint(&l)?),
                        None => self.pick_for_read(Instant::now()),
                    }
                }
                (CallKind::Read, None) => self.pick_for_read(Instant::now()),
            };
            let Some(target) = target else {
                last_error = "every endpoint's circuit breaker is open".into();
                self.pause(&mut backoff, deadline).await;
                continue;
            };
            let addr = target.spec.addr.clone();
            if !target.try_acquire(Instant::now()) {
                last_error = format!("{addr}: circuit breaker open");
                self.forget_leader(&addr);
                self.pause(&mut backoff, deadline).await;
                continue;
            }
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = remaining.min(config.attempt_timeout);
            let mut request = self.request(req.clone());
            request.set_timeout(attempt_timeout);
            request.metadata_mut().insert(metadata::REQUEST_ID, request_id.clone());
            if let Some(t) = &ticket {
                let md = request.metadata_mut();
                md.insert(metadata::CLIENT_ID, MetadataValue::from(self.inner.sequence.client_id));
                md.insert(metadata::REQUEST_SEQ, MetadataValue::from(t.seq));
                md.insert(
                    metadata::ACKED_BELOW,
                    MetadataValue::from(self.inner.sequence.acked_below()),
                );
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(attempt_timeout, send(target.channel.clone(), request)).await;
            let (failure, transport_failure) = match outcome {
                Ok(Ok(resp)) => {
                    target.record(false, started.elapsed());
                    if kind == CallKind::Write {
                        self.set_leader(Some(addr));
                    }
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => classify(&status),
                Err(_) => (Failure::Unknown(format!("no reply within {attempt_timeout:?}")), true),
            };
            target.record(transport_failure, started.elapsed());
            match failure {
                Failure::Final(e) => return Err(e),
                Failure::Unknown(msg) => {
                    last_error = format!("{addr}: {msg}");
                    self.forget_leader(&addr);
                    if kind == CallKind::Write {
                        outcome_unknown = true;
                        if ticket.is_none() {
                            return Err(ClientError::Indeterminate(last_error));
                        }
                    }
                    self.pause(&mut backoff, deadline).await;
                }
                Failure::Redirect { addr: hint, message } => {
                    last_error = format!("{addr}: {message}");
                    if hint == addr {
                        // A stale hint pointing back at the node that gave it.
                        self.set_leader(None);
                        self.pause(&mut backoff, deadline).await;
                    } else if kind == CallKind::Write && self.is_lost_leader(&hint) {
                        // This node's lease on the dead leader has not run out yet: wait for
                        // the election (the next attempt polls for the new leader).
                        self.set_leader(None);
                    } else {
                        tracing::debug!(from = %addr, to = %hint, "following leader hint");
                        self.set_leader(Some(hint.clone()));
                        redirect = Some(hint);
                    }
                }
                Failure::NotStarted(msg) => {
                    last_error = format!("{addr}: {msg}");
                    if kind == CallKind::Write && transport_failure && self.known_leader().as_deref() == Some(&addr) {
                        // The leader is gone (connection refused): the next attempt polls for
                        // its successor.
                        self.leader_lost(&addr);
                    } else {
                        self.forget_leader(&addr);
                        self.pause(&mut backoff, deadline).await;
                    }
                }
            }
        }
    }

    async fn pause(&self, backoff: &mut Backoff, deadline: Instant) {
        let delay = backoff.next_delay();
        tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
    }

    /// Finds the leader. Right after the leader refused a connection, polls every
    /// [`LEADER_POLL_INTERVAL`] (up to [`LEADER_POLL_LIMIT`] or `deadline`) while no node names a
    /// live one. One call polls at a time; the others wait and take its answer.
    async fn await_leader(&self, deadline: Instant) -> Option<String> {
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
    async fn discover_leader(&self, deadline: Instant) -> Option<String> {
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

    async fn probe_all(
        &self,
        addrs: &[String],
        timeout: Duration,
    ) -> Vec<(String, Result<StatusResponse, String>, Option<Duration>)> {
        let probes = addrs.iter().map(|addr| {
            let addr = addr.clone();
            async move {
                let started = Instant::now();
                let result = self.status_of(&addr, timeout).await.map_err(|e| e.to_string());
                let latency = result.is_ok().then(|| started.elapsed());
                (addr, result, latency)
            }
        });
        futures::future::join_all(probes).await
    }

    /// The status of the node at `addr` (one attempt, no retries, no breaker).
    pub async fn status_of(&self, addr: &str, timeout: Duration) -> Result<StatusResponse, ClientError> {
        let channel = self.endpoint(addr)?.channel.clone();
        let mut request = self.request(StatusRequest {});
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, ClusterClient::new(channel).status(request)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == Code::Unavailable => Err(ClientError::Unavailable(s.message().to_string())),
            Ok(Err(s)) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                Err(ClientError::Unavailable(format!("no reply within {timeout:?}")))
            }
            Ok(Err(s)) => Err(ClientError::from_status(&s)),
            Err(_) => Err(ClientError::Unavailable(format!("no reply within {timeout:?}"))),
        }
    }

    /// The status of every node the client can learn of: its endpoints, plus every member they
    /// report. Nodes that do not answer are included with the reason.
    pub async fn cluster_status(&self) -> Vec<NodeReport> {
        let timeout = self.inner.config.timeout.min(Duration::from_secs(2));
        let addrs: Vec<String> = self.snapshot().iter().map(|e| e.spec.addr.clone()).collect();
        let mut results: BTreeMap<String, (Result<StatusResponse, String>, Option<Duration>)> = self
            .probe_all(&addrs, timeout)
            .await
            .into_iter()
            .map(|(a, s, l)| (a, (s, l)))
            .collect();
        // Members as reported by the answering node with the highest term.
        let members = results
            .values()
            .filter_map(|(r, _)| r.as_ref().ok())
            .max_by_key(|s| (s.term, s.role == Role::Leader as i32))
            .map(|s| s.members.clone())
            .unwrap_or_default();
        let missing: Vec<String> = members
            .iter()
            .map(|m| m.client_addr.clone())
            .filter(|a| !a.is_empty() && !results.contains_key(a))
            .collect();
        results.extend(
            self.probe_all(&missing, timeout)
                .await
                .into_iter()
                .map(|(a, s, l)| (a, (s, l))),
        );
        let views: BTreeMap<String, EndpointReport> =
            self.endpoints().into_iter().map(|e| (e.addr.clone(), e)).collect();
        let mut reports: Vec<NodeReport> = results
            .into_iter()
            .map(|(addr, (status, latency))| {
                let id = match &status {
                    Ok(s) => Some(s.id),
                    Err(_) => members.iter().find(|m| m.client_addr == addr).map(|m| m.id),
                };
                let endpoint = views.get(&addr).cloned();
                NodeReport {
                    id,
                    addr,
                    status,
                    latency,
                    endpoint,
                }
            })
            .collect();
        reports.sort_by_key(|r| (r.id.is_none(), r.id, r.addr.clone()));
        reports
    }

    /// A request carrying this client's token, if it has one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.inner.authorization {
            request.metadata_mut().insert(metadata::AUTHORIZATION, auth.clone());
        }
        request
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
        let opts = ReadOptions {
            consistency,
            timeout,
            allow_degraded: false,
        };
        Ok(self.get_opts(key, opts).await?.response)
    }

    /// Reads `key` with full control over consistency, deadline and degradation.
    pub async fn get_opts(&self, key: impl Into<Vec<u8>>, opts: ReadOptions) -> Result<Read<GetResponse>, ClientError> {
        let key = key.into();
        self.read_degradable(opts, |consistency, timeout| {
            let req = GetRequest {
                key: key.clone(),
                consistency: consistency as i32,
            };
            async move {
                self.call(CallKind::Read, Some(timeout), req, |ch, r| async move {
                    kv_client(ch).get(r).await
                })
                .await
            }
        })
        .await
    }

    /// Reads a range of keys; the consistency is the request's.
    pub async fn range(&self, req: RangeRequest, timeout: Option<Duration>) -> Result<RangeResponse, ClientError> {
        let consistency = Consistency::try_from(req.consistency).unwrap_or(Consistency::Linearizable);
        let opts = ReadOptions {
            consistency,
            timeout,
            allow_degraded: false,
        };
        Ok(self.range_opts(req, opts).await?.response)
    }

    /// Reads a range of keys with full control over consistency, deadline and degradation
    /// (the request's own `consistency` field is replaced by `opts.consistency`).
    pub async fn range_opts(&self, req: RangeRequest, opts: ReadOptions) -> Result<Read<RangeResponse>, ClientError> {
        self.read_degradable(opts, |consistency, timeout| {
            let req = RangeRequest {
                consistency: consistency as i32,
                ..req.clone()
            };
            async move {
                self.call(CallKind::Read, Some(timeout), req, |ch, r| async move {
                    kv_client(ch).range(r).await
                })
                .await
            }
        })
        .await
    }

    /// Runs a read; with `allow_degraded`, a linearizable read that fails for want of a quorum
    /// or leader is replaced by a stale read in the last quarter of the deadline.
    async fn read_degradable<T, F, Fut>(&self, opts: ReadOptions, read: F) -> Result<Read<T>, ClientError>
    where
        F: Fn(Consistency, Duration) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let total = opts.timeout.unwrap_or(self.inner.config.timeout);
        let linearizable = matches!(opts.consistency, Consistency::Linearizable | Consistency::Unspecified);
        if !(opts.allow_degraded && linearizable) {
            return Ok(Read {
                response: read(opts.consistency, total).await?,
                degraded: false,
            });
        }
        let reserve = (total / 4).max(Duration::from_millis(200)).min(total);
        let started = Instant::now();
        match read(Consistency::Linearizable, total - reserve).await {
            Ok(response) => Ok(Read {
                response,
                degraded: false,
            }),
            Err(ClientError::Unavailable(why)) => {
                tracing::warn!("linearizable read unavailable ({why}); serving a degraded stale read");
                let left = total.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
                Ok(Read {
                    response: read(Consistency::Stale, left).await?,
                    degraded: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResponse, ClientError> {
        let req = DeleteRequest {
            key: key.into(),
            ..Default::default()
        };
        self.delete_request(req, None).await
    }

    /// Sends a full DeleteRequest (a key, a prefix or an interval), with an optional deadline.
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

    /// Adds node `id` as a learner, waits until it has caught up, and promotes it to voter
    /// (unless `learner_only`). Sent to the leader; may take a while for a big catch-up.
    pub async fn add_member(
        &self,
        id: u64,
        client_addr: &str,
        peer_addr: &str,
        learner_only: bool,
        timeout: Option<Duration>,
    ) -> Result<MembersResponse, ClientError> {
        let req = AddMemberRequest {
            id,
            client_addr: client_addr.into(),
            peer_addr: peer_addr.into(),
            learner_only,
        };
        self.call(
            CallKind::Write,
            timeout.or(Some(MEMBERSHIP_TIMEOUT)),
            req,
            |ch, r| async move { ClusterClient::new(ch).add_member(r).await },
        )
        .await
    }

    /// Makes learner `id` a voter.
    pub async fn promote_member(&self, id: u64) -> Result<MembersResponse, ClientError> {
        self.call(
            CallKind::Write,
            Some(MEMBERSHIP_TIMEOUT),
            PromoteMemberRequest { id },
            |ch, r| async move { ClusterClient::new(ch).promote_member(r).await },
        )
        .await
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<MembersResponse, ClientError> {
        self.call(
            CallKind::Write,
            Some(MEMBERSHIP_TIMEOUT),
            RemoveMemberRequest { id },
            |ch, r| async move { ClusterClient::new(ch).remove_member(r).await },
        )
        .await
    }

    /// The members and their replication progress, as the leader sees them.
    pub async fn list_members(&self) -> Result<MembersResponse, ClientError> {
        self.call(CallKind::Write, None, ListMembersRequest {}, |ch, r| async move {
            ClusterClient::new(ch).list_members(r).await
        })
        .await
    }

    /// Builds a snapshot on the node at `addr` now.
    pub async fn snapshot_on(&self, addr: &str) -> Result<SnapshotResponse, ClientError> {
        let channel = self.endpoint(addr)?.channel.clone();
        let mut request = self.request(SnapshotRequest {});
        request.set_timeout(MEMBERSHIP_TIMEOUT);
        ClusterClient::new(channel)
            .snapshot(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| classify_single(addr, &s))
    }

    /// Streams a backup from the node at `addr` (the leader when `None`).
    pub async fn backup_from(&self, addr: Option<&str>) -> Result<tonic::Streaming<BackupChunk>, ClientError> {
        let addr = match addr {
            Some(a) => a.to_string(),
            None => match self.known_leader() {
                Some(l) => l,
                None => self
                    .discover_leader(Instant::now() + self.inner.config.timeout)
                    .await
                    .ok_or_else(|| ClientError::Unavailable("no leader to take the backup from".into()))?,
            },
        };
        let channel = self.endpoint(&addr)?.channel.clone();
        let mut request = self.request(BackupRequest {});
        request.set_timeout(MEMBERSHIP_TIMEOUT);
        ClusterClient::new(channel)
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .backup(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| classify_single(&addr, &s))
    }
}

/// Default deadline of membership, snapshot and backup calls (a learner may need a while to
/// catch up; a snapshot of a big state takes time to build).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(180);

/// The error of a one-shot call to a named node.
fn classify_single(addr: &str, s: &Status) -> ClientError {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            ClientError::Unavailable(format!("{addr}: {}", s.message()))
        }
        _ => ClientError::from_status(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(classify(&redirect), (Failure::Redirect { addr, .. }, false) if addr == "127.0.0.1:7002"));
        let no_leader = status_with(Code::Unavailable, Some(error_kind::NO_LEADER), None);
        assert!(
            matches!(classify(&no_leader), (Failure::NotStarted(_), false)),
            "the node answered"
        );
        let indeterminate = status_with(Code::Unavailable, Some(error_kind::INDETERMINATE), None);
        assert!(matches!(classify(&indeterminate), (Failure::Unknown(_), false)));
        // A transport failure without our metadata, not at connect time: unknown outcome, and
        // it counts against the endpoint.
        let broken = status_with(Code::Unavailable, None, None);
        assert!(matches!(classify(&broken), (Failure::Unknown(_), true)));
        assert!(matches!(
            classify(&status_with(Code::DeadlineExceeded, None, None)),
            (Failure::Unknown(_), true)
        ));
        assert!(matches!(
            classify(&status_with(Code::InvalidArgument, None, None)),
            (Failure::Final(ClientError::InvalidArgument(_)), false)
        ));
        // Shed before it started: retried after a backoff, without blaming the endpoint.
        let overloaded = status_with(Code::ResourceExhausted, Some(error_kind::OVERLOADED), None);
        assert!(matches!(classify(&overloaded), (Failure::NotStarted(_), false)));
        // A refused token is final: retrying cannot change the answer.
        assert!(matches!(
            classify(&status_with(Code::PermissionDenied, None, None)),
            (Failure::Final(ClientError::PermissionDenied(_)), false)
        ));
        assert!(matches!(
            classify(&status_with(Code::Unauthenticated, None, None)),
            (Failure::Final(ClientError::Unauthenticated(_)), false)
        ));
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
