//! Commands replicated through the Raft log, and the replies `apply` produces for them.
//!
//! `apply` must be a pure function of the log: anything time-dependent uses
//! [`Request::timestamp_ms`], which the leader stamps before proposing.

use serde::{Deserialize, Serialize};

/// One replicated client request: the payload of a normal log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Wall-clock milliseconds since the Unix epoch on the leader when it proposed the entry.
    pub timestamp_ms: u64,
    /// Identifies a client's numbered write for exactly-once application (None: not tracked).
    pub session: Option<ClientSession>,
    pub command: Command,
}

impl std::fmt::Display for Request {
    /// What openraft prints of an entry: the kind of command, not its keys or values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.command {
            Command::Put { .. } => "put".to_string(),
            Command::Delete { .. } => "delete".to_string(),
            Command::SetClusterId { .. } => "set-cluster-id".to_string(),
            Command::DeleteRange { .. } => "delete-range".to_string(),
            Command::Txn(_) => "txn".to_string(),
            Command::Batch(writes) => format!("batch of {}", writes.len()),
            Command::LeaseGrant { .. } => "lease-grant".to_string(),
            Command::LeaseRevoke { .. } => "lease-revoke".to_string(),
            Command::PutLeased { .. } => "put-leased".to_string(),
        };
        write!(f, "{kind} @{}ms", self.timestamp_ms)
    }
}

/// `(client_id, seq)` of a client write, for exactly-once application (Raft thesis §6.3).
///
/// A client numbers its writes and retries a write with the same number. `acked_below` is the
/// client's promise that it has its answer for every seq below it, so the state machine may
/// forget those answers; this lets one client have many writes in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    pub client_id: u64,
    pub seq: u64,
    pub acked_below: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        prev_kv: bool,
    },
    /// Remove `key` if present.
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        prev_kv: bool,
    },
    /// Record the cluster's id. Applied only if no id is set yet, so a retried or duplicated
    /// proposal is harmless.
    SetClusterId { cluster_id: u64 },
    /// Remove every key in `[start, end)` (`end` None: no upper bound).
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        end: Option<serde_bytes::ByteBuf>,
        prev_kv: bool,
    },
    /// Compare-then-act, atomically.
    Txn(Txn),
    /// Several clients' writes that the leader's write batcher proposed as one log entry (one
    /// append and one fsync for all of them). They apply in order, each under its own
    /// exactly-once session and with its own revision (consecutive within the entry). A batch
    /// never holds two writes that touch the same key (see [`Command::point_keys`]).
    Batch(Vec<BatchedWrite>),
    // New variants go last: bincode names a variant by its position, and logs, snapshots and
    // session records written by older builds must still decode.
    /// Create lease `id` with a time-to-live of `ttl_ms`. The TTL is only recorded: the leader
    /// decides expiry on its own clock and proposes a [`Command::LeaseRevoke`] (see the node's
    /// `LeaseKeeper`), so applying stays a pure function of the log.
    LeaseGrant { id: u64, ttl_ms: u64 },
    /// Delete lease `id` and every key attached to it (one change, one revision).
    LeaseRevoke { id: u64 },
    /// Set `key` to `value` and attach it to lease `lease` (which must exist), detaching it from
    /// any other lease; the key is deleted when the lease goes.
    PutLeased {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        prev_kv: bool,
        lease: u64,
    },
}

/// One client write inside a [`Command::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchedWrite {
    pub session: Option<ClientSession>,
    pub command: Command,
}

impl Command {
    /// The keys this command reads or writes, when it touches single keys only; `None` when it
    /// touches a range (or cluster state), so it must not share a batch with anything.
    pub fn point_keys(&self) -> Option<Vec<&[u8]>> {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } | Command::PutLeased { key, .. } => {
                Some(vec![key.as_slice()])
            }
            // They touch lease records and the keys of a lease; the applier reads through the
            // earlier writes of a batch, so they may share one (10,000 grants would otherwise
            // take 10,000 log entries).
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => Some(vec![]),
            Command::Txn(txn) => {
                let mut keys: Vec<&[u8]> = txn.compares.iter().map(|c| c.key.as_slice()).collect();
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Put { key, .. }
                        | TxnOp::Delete { key, .. }
                        | TxnOp::Get { key }
                        | TxnOp::PutLeased { key, .. } => keys.push(key),
                        TxnOp::DeleteRange { .. } | TxnOp::Range { .. } => return None,
                    }
                }
                Some(keys)
            }
            Command::DeleteRange { .. } | Command::SetClusterId { .. } | Command::Batch(_) => None,
        }
    }
}

/// A transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// `target(key) op operand`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value's bytes; false for a missing key whatever the op.
    Value(CmpOp, serde_bytes::ByteBuf),
    /// The key's version (0 when missing).
    Version(CmpOp, u64),
    /// The key's create revision (0 when missing).
    CreateRevision(CmpOp, u64),
    /// The key's mod revision (0 when missing).
    ModRevision(CmpOp, u64),
    /// Whether the key exists.
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    pub fn holds<T: Ord + ?Sized>(self, actual: &T, expected: &T) -> bool {
        match self {
            CmpOp::Equal => actual == expected,
            CmpOp::NotEqual => actual != expected,
            CmpOp::Less => actual < expected,
            CmpOp::Greater => actual > expected,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        prev_kv: bool,
    },
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        end: Option<serde_bytes::ByteBuf>,
        prev_kv: bool,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A put that attaches the key to lease `lease` (last, for decoding older logs). A
    /// transaction whose chosen branch names a missing lease applies nothing and answers
    /// [`Response::LeaseNotFound`].
    PutLeased {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        prev_kv: bool,
        lease: u64,
    },
    /// Reads every key in `[start, end)` (`end` None: to the last key), as the transaction
    /// sees them at this point (last, for decoding older logs).
    Range {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        end: Option<serde_bytes::ByteBuf>,
    },
}

/// What one transaction operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
    /// The key-values a [`TxnOp::Range`] read, in key order (last, for decoding older records).
    Range {
        kvs: Vec<KeyValue>,
    },
}

impl Request {
    pub fn new(command: Command, timestamp_ms: u64) -> Self {
        Self {
            timestamp_ms,
            session: None,
            command,
        }
    }
}

/// A key, its value and its revision metadata, as stored and as returned to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries, which carry no client command.
    Empty,
    Put {
        revision: u64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        revision: u64,
        deleted: u64,
        /// The deleted key-values in key order (empty unless asked for).
        prev_kvs: Vec<KeyValue>,
    },
    /// The cluster id now in force (the earlier one if it was already set).
    ClusterId {
        cluster_id: u64,
    },
    Txn {
        revision: u64,
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    /// A retry of a write whose answer the client had already received (its seq is below the
    /// client's `acked_below`): nothing was applied again, and the answer is gone.
    AlreadyAcknowledged {
        client_id: u64,
        seq: u64,
    },
    /// One response per write of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    // New variants go last (see `Command`).
    LeaseGranted {
        revision: u64,
        id: u64,
        ttl_ms: u64,
    },
    /// The lease is gone, and so are its keys (`deleted` of them).
    LeaseRevoked {
        revision: u64,
        deleted: u64,
    },
    /// The command named lease `id`, which does not exist (never granted, revoked or expired):
    /// nothing was applied.
    LeaseNotFound {
        id: u64,
    },
    /// A grant asked for lease `id`, which exists already: nothing was applied.
    LeaseExists {
        id: u64,
    },
}
