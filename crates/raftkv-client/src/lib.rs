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
//! Module map: [`client`] (endpoints, leader tracking, the retry loop), [`retry`] (backoff
//! with jitter), [`txn`] (compares and operations for transactions), [`error`] (what a caller
//! can get back). It is built on the public gRPC API
//! only (raftkv-proto), never on the server's crates.

pub mod client;
pub mod error;
pub mod retry;
pub mod txn;

pub use client::{Client, ClientConfig, NodeReport, DEFAULT_ENDPOINTS};
pub use error::ClientError;
/// The generated API types (requests, replies, enums).
pub use raftkv_proto::v1 as pb;
