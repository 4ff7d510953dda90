//! raftkv-client: the Rust client library for raftkv.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftkv_client::ClientError> {
//! use raftkv_client::{Client, ClientConfig};
//! let client = Client::new(ClientConfig::from_list("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"))?;
//! client.put("greeting", "hello").await?;
//! let reply = client.get("greeting").await?;
//! assert_eq!(reply.kv.map(|kv| kv.value), Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! Module map: [`client`] (the `Client`, in one file per concern under `client/`: endpoints
//! and their breakers, leader tracking and discovery, the call/retry loop with failure
//! classification, data calls and degraded reads, admin calls),
//! [`config`] (settings and the endpoint list syntax), [`breaker`] (per-endpoint circuit
//! breakers), [`balancer`] (smooth weighted round robin), [`retry`] (backoff with jitter),
//! `session` (numbering writes for exactly-once), [`coordination`] (locks with fencing tokens
//! and leader elections, on leases), [`txn`] (compares and operations for
//! transactions), [`registry`] (the service registry: instances on leases, discovery
//! with weighted picks, backups and breakers), [`error`] (what a caller can get back). See docs/client.md. It is built on the public gRPC API
//! only (raftkv-proto), never on the server's crates.

pub mod balancer;
pub mod breaker;
pub mod client;
pub mod config;
pub mod coordination;
pub mod error;
mod prefix;
pub mod registry;
pub mod retry;
mod session;
pub mod txn;

pub use breaker::{BreakerConfig, BreakerState};
pub use client::{
    Client, EndpointReport, LeaseKeepAlive, LeaseState, NodeReport, Read, ReadOptions, WatchBatch, WatchOptions,
    Watcher,
};
pub use config::{ClientConfig, ClientTls, EndpointSpec, RetryPolicy, Token, DEFAULT_ENDPOINTS};
pub use coordination::{Leader, LeaderObserver, Leadership, LockGuard};
pub use error::ClientError;
/// The backup file format (written by `raftkv backup`, read by `raftkvd restore`).
pub use raftkv_proto::backup;
/// The generated API types (requests, replies, enums).
pub use raftkv_proto::v1 as pb;
