//! `--driver etcd`: the benchmark's operations against etcd's v3 API (etcd-client crate).
//!
//! Built only with the cargo feature `etcd`. Reads are linearizable Range calls or, for
//! `--consistency stale`, serializable ones (served by whichever member gets them); the
//! compare-and-swap is one Txn, like raftkv's. There are no client-side retries: a failed call is
//! counted and the workload moves on, which is how etcd's own benchmark tool behaves.
//!
//! Driven at its best, as etcd's own `benchmark` tool drives it: writes go straight to the
//! leader (a follower would forward them, one more hop), over `--connections` gRPC connections
//! to it; reads over one connection per member per `--connections`, taken in turn. Each client
//! object is pointed at one member, so no client-side balancer sits on the path.
//!
//! An error from a write counts as indeterminate unless the request cannot have reached a
//! server (the connection was refused).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, Txn, TxnOp,
    TxnOpResponse, WatchOptions, WatchStream,
};

use super::driver::{CasOutcome, Leader, OpError};
use super::Target;

#[derive(Clone)]
pub struct EtcdDriver {
    /// Where writes go: connections to the leader (or, with `Target::AnyNode`, clients that
    /// balance over every member).
    writers: Vec<Client>,
    /// Where reads go: `readers[conn]` holds one client per member read from.
    readers: Vec<Vec<Client>>,
    /// Spreads reads over the members in turn.
    next_read: Arc<AtomicUsize>,
    /// One client per endpoint, for per-member status calls.
    members: Vec<Client>,
}

fn error(e: etcd_client::Error, write: bool) -> OpError {
    let (kind, never_sent) = match &e {
        etcd_client::Error::GRpcStatus(s) => {
            let refused = s.code() == tonic::Code::Unavailable
                && (s.message().contains("connect") || s.message().contains("refused"));
            (format!("{:?}", s.code()).to_lowercase(), refused)
        }
        etcd_client::Error::TransportError(_) => ("transport".to_string(), false),
        etcd_client::Error::InvalidArgs(_) => ("invalid_argument".to_string(), true),
        _ => ("other".to_string(), false),
    };
    let kind = match kind.as_str() {
        "unavailable" | "deadlineexceeded" | "cancelled" | "unknown" | "transport" | "other" | "invalid_argument" => {
            kind.replace("deadlineexceeded", "deadline_exceeded")
        }
        k => format!("server_{k}"),
    };
    OpError {
        indeterminate: write && !never_sent,
        kind,
        message: e.to_string(),
    }
}

fn options(timeout: Duration) -> ConnectOptions {
    ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout)
}

impl EtcdDriver {
    pub async fn connect(
        endpoints: &str,
        connections: usize,
        target: Target,
        timeout: Duration,
    ) -> Result<Self, OpError> {
        let list: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        if list.is_empty() {
            return Err(OpError {
                kind: "config".into(),
                indeterminate: false,
                message: "no etcd endpoints given".into(),
            });
        }
        let mut members = Vec::new();
        for e in &list {
            members.push(
                Client::connect([e.as_str()], Some(options(timeout)))
                    .await
                    .map_err(|e| error(e, false))?,
            );
        }
        let mut this = EtcdDriver {
            writers: Vec::new(),
            readers: Vec::new(),
            next_read: Arc::new(AtomicUsize::new(0)),
            members,
        };
        let connect = |endpoints: Vec<String>| async move {
            Client::connect(endpoints, Some(options(timeout)))
                .await
                .map_err(|e| error(e, false))
        };
        let connections = connections.max(1);
        let leader = match target {
            Target::AnyNode => None,
            Target::Leader | Target::All => Some(this.leader().await?.addr),
        };
        for _ in 0..connections {
            let writer = match &leader {
                Some(addr) => connect(vec![addr.clone()]).await?,
                None => connect(list.clone()).await?,
            };
            let readers = match target {
                Target::Leader | Target::AnyNode => vec![writer.clone()],
                Target::All => {
                    let mut one_per_member = Vec::new();
                    for e in &list {
                        one_per_member.push(connect(vec![e.clone()]).await?);
                    }
                    one_per_member
                }
            };
            this.writers.push(writer);
            this.readers.push(readers);
        }
        Ok(this)
    }

    fn writer(&self, conn: usize) -> Client {
        self.writers[conn % self.writers.len()].clone()
    }

    fn reader(&self, conn: usize) -> Client {
        let members = &self.readers[conn % self.readers.len()];
        members[self.next_read.fetch_add(1, Ordering::Relaxed) % members.len()].clone()
    }

    /// A watch of `prefix` on member `n % members` (its own watch stream, as etcd's clients
    /// open one per watcher).
    pub async fn watch_prefix(&self, n: usize, prefix: &[u8]) -> Result<EtcdWatch, OpError> {
        let mut client = self.members[n % self.members.len()].clone();
        let stream = client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| error(e, false))?;
        Ok(EtcdWatch { stream })
    }

    /// Grants a lease of `ttl` (etcd counts TTLs in whole seconds) through the leader.
    pub async fn lease_grant(&self, conn: usize, ttl: Duration) -> Result<u64, OpError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let reply = self
            .writer(conn)
            .lease_grant(seconds, None)
            .await
            .map_err(|e| error(e, true))?;
        Ok(reply.id() as u64)
    }

    /// Opens lease `id`'s keep-alive stream, as etcd-client's users do.
    pub async fn lease_keeper(&self, conn: usize, id: u64) -> Result<EtcdLeaseKeeper, OpError> {
        let (keeper, stream) = self
            .writer(conn)
            .lease_keep_alive(id as i64)
            .await
            .map_err(|e| error(e, false))?;
        Ok(EtcdLeaseKeeper { keeper, stream })
    }

    pub async fn lease_revoke(&self, conn: usize, id: u64) -> Result<(), OpError> {
        self.writer(conn)
            .lease_revoke(id as i64)
            .await
            .map(|_| ())
            .map_err(|e| error(e, true))
    }

    pub async fn put(&self, conn: usize, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.writer(conn)
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(|e| error(e, true))
    }

    pub async fn get(&self, conn: usize, key: &[u8], linearizable: bool) -> Result<Option<Vec<u8>>, OpError> {
        let opts = (!linearizable).then(|| GetOptions::new().with_serializable());
        let resp = self.reader(conn).get(key, opts).await.map_err(|e| error(e, false))?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    pub async fn compare_and_swap(
        &self,
        conn: usize,
        key: &[u8],
        expected: &[u8],
        new: &[u8],
    ) -> Result<CasOutcome, OpError> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, new, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.writer(conn).txn(txn).await.map_err(|e| error(e, true))?;
        if resp.succeeded() {
            return Ok(CasOutcome::Swapped);
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.value().to_vec())),
            _ => None,
        });
        Ok(CasOutcome::Conflict(current.flatten()))
    }

    pub async fn preload(&self, conn: usize, items: &[(Vec<u8>, Vec<u8>)]) -> Result<(), OpError> {
        for chunk in items.chunks(super::driver::PRELOAD_BATCH) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
                .collect();
            self.writer(conn)
                .txn(Txn::new().and_then(ops))
                .await
                .map_err(|e| error(e, true))?;
        }
        Ok(())
    }

    /// The leader as any member reports it, named by its member name.
    pub async fn leader(&self) -> Result<Leader, OpError> {
        let mut last = None;
        for member in &self.members {
            let mut m = member.clone();
            let leader_id = match m.status().await {
                Ok(s) if s.leader() != 0 => s.leader(),
                Ok(_) => continue,
                Err(e) => {
                    last = Some(error(e, false));
                    continue;
                }
            };
            let list = match m.member_list().await {
                Ok(l) => l,
                Err(e) => {
                    last = Some(error(e, false));
                    continue;
                }
            };
            if let Some(leader) = list.members().iter().find(|x| x.id() == leader_id) {
                let url = leader.client_urls().first().cloned().unwrap_or_default();
                return Ok(Leader {
                    name: leader.name().to_string(),
                    addr: url.trim_start_matches("http://").to_string(),
                });
            }
        }
        Err(last.unwrap_or(OpError {
            kind: "unavailable".into(),
            indeterminate: false,
            message: "no etcd member reports a leader".into(),
        }))
    }

    pub async fn max_term(&self) -> Result<u64, OpError> {
        let mut best = None;
        for member in &self.members {
            if let Ok(s) = member.clone().status().await {
                best = best.max(Some(s.raft_term()));
            }
        }
        best.ok_or_else(|| OpError {
            kind: "unavailable".into(),
            indeterminate: false,
            message: "no etcd member answered a status call".into(),
        })
    }
}

/// One lease's keep-alive stream: a keep-alive is a request on it and the answer to it.
pub struct EtcdLeaseKeeper {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl EtcdLeaseKeeper {
    pub async fn keep_alive(&mut self) -> Result<(), OpError> {
        self.keeper.keep_alive().await.map_err(|e| error(e, false))?;
        match self.stream.message().await.map_err(|e| error(e, false))? {
            Some(reply) if reply.ttl() > 0 => Ok(()),
            Some(_) => Err(OpError {
                kind: "lease_lost".into(),
                indeterminate: false,
                message: format!("etcd lease {:x} is gone", self.keeper.id()),
            }),
            None => Err(OpError {
                kind: "keep_alive_closed".into(),
                indeterminate: false,
                message: "etcd closed the keep-alive stream".into(),
            }),
        }
    }
}

/// One etcd watch stream.
pub struct EtcdWatch {
    stream: WatchStream,
}

impl EtcdWatch {
    /// The values of the next puts received.
    pub async fn next(&mut self) -> Result<Vec<Vec<u8>>, OpError> {
        match self.stream.message().await.map_err(|e| error(e, false))? {
            Some(resp) => Ok(resp
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
                .filter_map(|e| e.kv().map(|kv| kv.value().to_vec()))
                .collect()),
            None => Err(OpError {
                kind: "watch_closed".into(),
                indeterminate: false,
                message: "etcd closed the watch stream".into(),
            }),
        }
    }
}
