//! The systems `raftkv bench` drives, behind one set of operations.
//!
//! Workloads are written once against [`Driver`]. `--driver raftkv` (the default) sends them
//! through raftkv's own client, with its retries, breakers and exactly-once writes, as an
//! application would use it. `--driver etcd` (cargo feature `etcd`, off by default because
//! etcd-client's build needs a system protoc) sends the same operations to etcd's v3 API
//! through the etcd-client crate: Put, Range (linearizable or serializable) and Txn.
//!
//! Failures come back as [`OpError`]s; their `kind` is what reports count, and `indeterminate`
//! marks a write whose outcome is unknown.

use std::time::Duration;

use clap::ValueEnum;
use raftkv_client::pb::{self, Consistency};
use raftkv_client::{txn, Client, ClientConfig, ClientError};

use super::Target;

/// Which system to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// raftkv, through its Rust client.
    Raftkv,
    /// etcd's v3 API, through the etcd-client crate (build with `--features etcd`).
    Etcd,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Raftkv => "raftkv",
            DriverKind::Etcd => "etcd",
        }
    }
}

/// A failed operation, as the report counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Short, stable name: `unavailable`, `deadline_exceeded`, `server_internal`, ...
    pub kind: String,
    /// A write whose outcome is unknown (it may or may not have been applied).
    pub indeterminate: bool,
    pub message: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<ClientError> for OpError {
    fn from(e: ClientError) -> Self {
        let kind = match &e {
            ClientError::InvalidArgument(_) => "invalid_argument".to_string(),
            ClientError::Unavailable(_) => "unavailable".to_string(),
            ClientError::Indeterminate(_) => "indeterminate".to_string(),
            ClientError::Config(_) => "config".to_string(),
            ClientError::Unauthenticated(_) => "unauthenticated".to_string(),
            ClientError::PermissionDenied(_) => "permission_denied".to_string(),
            ClientError::Compacted { .. } => "compacted".to_string(),
            ClientError::NotFound(_) => "not_found".to_string(),
            ClientError::AlreadyExists(_) => "already_exists".to_string(),
            ClientError::Server { code, .. } => format!("server_{code:?}").to_lowercase(),
        };
        OpError {
            indeterminate: matches!(e, ClientError::Indeterminate(_)),
            kind,
            message: e.to_string(),
        }
    }
}

/// The outcome of one compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was what was expected and now holds the new one.
    Swapped,
    /// It held something else (returned, `None` when the key is missing).
    Conflict(Option<Vec<u8>>),
}

/// A watch of a prefix, for `bench watch`: yields the values of the put events it receives.
pub enum WatchFeed {
    Raftkv(raftkv_client::Watcher),
    #[cfg(feature = "etcd")]
    Etcd(super::etcd::EtcdWatch),
}

impl WatchFeed {
    /// The values of the next puts received.
    pub async fn next(&mut self) -> Result<Vec<Vec<u8>>, OpError> {
        match self {
            WatchFeed::Raftkv(w) => {
                let batch = w.next().await?;
                Ok(batch
                    .events
                    .into_iter()
                    .filter(|e| e.r#type == pb::event::EventType::Put as i32)
                    .filter_map(|e| e.kv.map(|kv| kv.value))
                    .collect())
            }
            #[cfg(feature = "etcd")]
            WatchFeed::Etcd(w) => w.next().await,
        }
    }
}

/// One lease kept alive by `bench lease`, the way each system's client does it.
pub enum LeaseKeeper {
    /// The client library's one-shot keep-alive, to the leader.
    Raftkv { client: Client, id: u64 },
    /// etcd-client's keep-alive stream for this lease.
    #[cfg(feature = "etcd")]
    Etcd(super::etcd::EtcdLeaseKeeper),
}

impl LeaseKeeper {
    /// Restarts the lease's TTL once; an error if the lease is gone.
    pub async fn keep_alive(&mut self) -> Result<(), OpError> {
        match self {
            LeaseKeeper::Raftkv { client, id } => {
                let reply = client.lease_keep_alive_once(*id).await?;
                if reply.ttl_ms == 0 {
                    return Err(OpError {
                        kind: "lease_lost".into(),
                        indeterminate: false,
                        message: format!("lease {id:x} is gone"),
                    });
                }
                Ok(())
            }
            #[cfg(feature = "etcd")]
            LeaseKeeper::Etcd(k) => k.keep_alive().await,
        }
    }
}

/// The current leader, as the failover harness needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What `{id}` in the kill and start commands becomes: raftkv's node id, etcd's member name.
    pub name: String,
    /// Its client address (`host:port`).
    pub addr: String,
}

/// Connections to one system: `connections` independent clients, each with its own
/// connections to the nodes; operation `i` goes through client `i % connections`.
#[derive(Clone)]
pub enum Driver {
    Raftkv(Vec<Client>),
    #[cfg(feature = "etcd")]
    Etcd(super::etcd::EtcdDriver),
}

/// The endpoints a driver is pointed at when none are given.
pub fn default_endpoints(kind: DriverKind) -> &'static str {
    match kind {
        DriverKind::Raftkv => raftkv_client::DEFAULT_ENDPOINTS,
        DriverKind::Etcd => "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379",
    }
}

/// What every raftkv client of a run is configured with (from the CLI's global flags).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Deadline of each call, retries included.
    pub timeout: Duration,
    /// Access token, for clusters started with `--auth-file`.
    pub token: Option<raftkv_client::Token>,
    /// TLS, for clusters started with `--tls-cert`.
    pub tls: Option<raftkv_client::ClientTls>,
}

impl Driver {
    /// Connects `connections` clients to `endpoints` (only the leader's with `Target::Leader`).
    pub async fn connect(
        kind: DriverKind,
        endpoints: &str,
        connections: usize,
        target: Target,
        client: &ClientSettings,
    ) -> Result<Self, OpError> {
        match kind {
            DriverKind::Raftkv => {
                let mut config = ClientConfig::parse(endpoints)?;
                config.timeout = client.timeout;
                config.token = client.token.clone();
                config.tls = client.tls.clone();
                if target == Target::Leader {
                    let probe = Client::new(config.clone())?;
                    let leader = Driver::Raftkv(vec![probe]).leader().await?;
                    config.endpoints = vec![raftkv_client::EndpointSpec::new(leader.addr)];
                }
                let clients = (0..connections.max(1))
                    .map(|_| Client::new(config.clone()))
                    .collect::<Result<_, _>>()?;
                Ok(Driver::Raftkv(clients))
            }
            #[cfg(feature = "etcd")]
            DriverKind::Etcd => Ok(Driver::Etcd(
                super::etcd::EtcdDriver::connect(endpoints, connections, target, client.timeout).await?,
            )),
            #[cfg(not(feature = "etcd"))]
            DriverKind::Etcd => Err(OpError {
                kind: "config".into(),
                indeterminate: false,
                message: "this raftkv was built without the etcd driver: rebuild with \
                          `cargo build --release -p raftkv-cli --features etcd` (needs protoc), \
                          or run scripts/bench-vs-etcd.sh, which does that"
                    .into(),
            }),
        }
    }

    fn raftkv(clients: &[Client], conn: usize) -> &Client {
        &clients[conn % clients.len()]
    }

    /// Starts watching `prefix`; watcher `n` is placed on the nodes in turn.
    pub async fn watch_prefix(&self, n: usize, prefix: &[u8]) -> Result<WatchFeed, OpError> {
        match self {
            Driver::Raftkv(c) => {
                let watcher = Self::raftkv(c, n)
                    .watch(raftkv_client::WatchOptions::prefix(prefix))
                    .await?;
                Ok(WatchFeed::Raftkv(watcher))
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => Ok(WatchFeed::Etcd(e.watch_prefix(n, prefix).await?)),
        }
    }

    /// Grants a lease of `ttl`; returns its id.
    pub async fn lease_grant(&self, conn: usize, ttl: Duration) -> Result<u64, OpError> {
        match self {
            Driver::Raftkv(c) => Ok(Self::raftkv(c, conn).lease_grant(ttl).await?.id),
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.lease_grant(conn, ttl).await,
        }
    }

    /// What keeps lease `id` alive.
    pub async fn lease_keeper(&self, conn: usize, id: u64) -> Result<LeaseKeeper, OpError> {
        match self {
            Driver::Raftkv(c) => Ok(LeaseKeeper::Raftkv {
                client: Self::raftkv(c, conn).clone(),
                id,
            }),
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => Ok(LeaseKeeper::Etcd(e.lease_keeper(conn, id).await?)),
        }
    }

    /// Revokes lease `id`.
    pub async fn lease_revoke(&self, conn: usize, id: u64) -> Result<(), OpError> {
        match self {
            Driver::Raftkv(c) => {
                Self::raftkv(c, conn).lease_revoke(id).await?;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.lease_revoke(conn, id).await,
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, conn: usize, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        match self {
            Driver::Raftkv(c) => {
                Self::raftkv(c, conn).put(key, value).await?;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.put(conn, key, value).await,
        }
    }

    /// Reads `key`: linearizable, or stale (etcd: serializable) from whichever node serves it.
    pub async fn get(&self, conn: usize, key: &[u8], linearizable: bool) -> Result<Option<Vec<u8>>, OpError> {
        match self {
            Driver::Raftkv(c) => {
                let consistency = if linearizable {
                    Consistency::Linearizable
                } else {
                    Consistency::Stale
                };
                let resp = Self::raftkv(c, conn).get_with(key, consistency, None).await?;
                Ok(resp.kv.map(|kv| kv.value))
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.get(conn, key, linearizable).await,
        }
    }

    /// One transaction: if `key` holds `expected`, put `new`; otherwise read what it holds.
    pub async fn compare_and_swap(
        &self,
        conn: usize,
        key: &[u8],
        expected: &[u8],
        new: &[u8],
    ) -> Result<CasOutcome, OpError> {
        match self {
            Driver::Raftkv(c) => {
                let req = pb::TxnRequest {
                    compare: vec![txn::value(key, txn::Op::Equal, expected)],
                    success: vec![txn::put(key, new)],
                    failure: vec![txn::get(key)],
                };
                let resp = Self::raftkv(c, conn).txn(req, None).await?;
                if resp.succeeded {
                    return Ok(CasOutcome::Swapped);
                }
                let current = resp.responses.into_iter().find_map(|r| match r.response {
                    Some(pb::txn_op_response::Response::Get(g)) => Some(g.kv.map(|kv| kv.value)),
                    _ => None,
                });
                Ok(CasOutcome::Conflict(current.flatten()))
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.compare_and_swap(conn, key, expected, new).await,
        }
    }

    /// Writes many keys quickly (transactions of up to 100 puts), before a run.
    pub async fn preload(&self, conn: usize, items: &[(Vec<u8>, Vec<u8>)]) -> Result<(), OpError> {
        match self {
            Driver::Raftkv(c) => {
                for chunk in items.chunks(PRELOAD_BATCH) {
                    let req = pb::TxnRequest {
                        compare: Vec::new(),
                        success: chunk.iter().map(|(k, v)| txn::put(k.clone(), v.clone())).collect(),
                        failure: Vec::new(),
                    };
                    Self::raftkv(c, conn).txn(req, None).await?;
                }
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.preload(conn, items).await,
        }
    }

    /// The current leader.
    pub async fn leader(&self) -> Result<Leader, OpError> {
        match self {
            Driver::Raftkv(c) => {
                let reports = c[0].cluster_status().await;
                let (id, addr) = crate::output::leader(&reports).ok_or_else(|| OpError {
                    kind: "unavailable".into(),
                    indeterminate: false,
                    message: "no node reports a leader".into(),
                })?;
                Ok(Leader {
                    name: id.to_string(),
                    addr,
                })
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.leader().await,
        }
    }

    /// The highest Raft term any reachable node reports: its growth over a run counts the
    /// elections held during it.
    pub async fn max_term(&self) -> Result<u64, OpError> {
        match self {
            Driver::Raftkv(c) => c[0]
                .cluster_status()
                .await
                .iter()
                .filter_map(|r| r.status.as_ref().ok().map(|s| s.term))
                .max()
                .ok_or_else(|| OpError {
                    kind: "unavailable".into(),
                    indeterminate: false,
                    message: "no node answered a status call".into(),
                }),
            #[cfg(feature = "etcd")]
            Driver::Etcd(e) => e.max_term().await,
        }
    }
}

/// Puts per preload transaction (etcd's default limit is 128 operations per Txn).
pub const PRELOAD_BATCH: usize = 100;
