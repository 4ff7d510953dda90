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
//!
//! The `Client` type, its constructor and the state its clones share live here; the rest is
//! split by concern into `impl Client` blocks in the submodules:
//! - `endpoints`: one channel, circuit breaker and set of counters per endpoint, and picking
//!   an endpoint for a read ([`EndpointReport`]);
//! - `leader`: the leader as last learned, the lost leader, and finding a new one through the
//!   endpoints' Status ([`LEADER_POLL_INTERVAL`]);
//! - `call`: the call/retry loop and the sorting of a failed attempt;
//! - `data`: the key-value calls (put, get, range, delete, txn, compare-and-swap) and degraded
//!   reads ([`ReadOptions`], [`Read`]);
//! - `admin`: membership, Status, cluster status, snapshot and backup calls ([`NodeReport`],
//!   [`MEMBERSHIP_TIMEOUT`]);
//! - `watch`: watches that resume on another node from the next revision ([`Watcher`]);
//! - `lease`: lease calls and leases kept alive in the background ([`LeaseKeepAlive`]).

mod admin;
mod call;
mod data;
mod endpoints;
mod leader;
mod lease;
mod watch;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use raftkv_proto::metadata;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;

use crate::balancer::SmoothWeightedRoundRobin;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::session::WriteSequence;

pub use admin::{NodeReport, MEMBERSHIP_TIMEOUT};
pub use data::{Read, ReadOptions};
pub use endpoints::EndpointReport;
use endpoints::EndpointState;
pub use leader::LEADER_POLL_INTERVAL;
pub use lease::{LeaseKeepAlive, LeaseState};
pub use watch::{WatchBatch, WatchOptions, Watcher};

/// Largest reply the client accepts (the server keeps Range replies near 3 MiB; a Get of a
/// maximal value is 1 MiB).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

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
    /// Where the next watch starts looking for a node: watches are spread over the endpoints.
    next_watch_endpoint: std::sync::atomic::AtomicUsize,
    /// Clean-ups started in the background (a dropped lock's revoke), for [`Client::settle`].
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

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
                next_watch_endpoint: std::sync::atomic::AtomicUsize::new(0),
                background: Mutex::new(Vec::new()),
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

    /// Runs `cleanup` in the background (a dropped lock or leadership revoking its lease);
    /// [`Self::settle`] waits for it.
    pub(crate) fn spawn_cleanup(&self, cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
        // Without a runtime (the program is ending) there is nothing to run it on: a lease
        // then simply expires after its TTL.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let handle = runtime.spawn(cleanup);
        if let Ok(mut background) = self.inner.background.lock() {
            background.retain(|h| !h.is_finished());
            background.push(handle);
        }
    }

    /// Waits (at most `timeout`) for the clean-ups started in the background to finish: call
    /// it before a program exits, so a lock given up at the last moment is released at once
    /// rather than when its lease expires.
    pub async fn settle(&self, timeout: Duration) {
        let pending: Vec<_> = match self.inner.background.lock() {
            Ok(mut background) => background.drain(..).collect(),
            Err(_) => return,
        };
        let _ = tokio::time::timeout(timeout, futures::future::join_all(pending)).await;
    }

    /// A request carrying this client's token, if it has one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.inner.authorization {
            request.metadata_mut().insert(metadata::AUTHORIZATION, auth.clone());
        }
        request
    }
}
