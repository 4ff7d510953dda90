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

/// `(client_id, seq)` of a client write (Raft thesis §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    pub client_id: u64,
    pub seq: u64,
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
        prev_kv: Option<KeyValue>,
    },
    /// The cluster id now in force (the earlier one if it was already set).
    ClusterId { cluster_id: u64 },
}
