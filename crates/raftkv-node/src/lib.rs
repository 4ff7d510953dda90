//! raftkv-node: one raftkv node — configuration, Raft wiring, the peer transport, the gRPC
//! services and start-up/shutdown. The `raftkvd` binary is a thin wrapper around
//! [`daemon::main`].
//!
//! Module map:
//! - [`config`]: `NodeConfig` (flags, env vars, defaults, `validate`) and API limits;
//! - [`startup`]: start-up errors, data-dir checks, one-time cluster bootstrap; [`join`]:
//!   joining an existing cluster;
//! - [`identity`]: the data dir's identity file (owner id, incarnation);
//! - [`node`]: `RunningNode` — start, serve, shut down;
//! - [`core`]: the write path and read barrier the services share;
//! - [`membership`]: adding, promoting and removing members; the removed-node state;
//! - [`read_index`]: linearizable reads on any node, with batched read-index rounds;
//! - [`kv_service`], [`cluster_service`]: the public gRPC API; [`request`]: validating and
//!   converting its messages;
//! - [`peer_service`], [`network`]: the node-to-node API, server and client sides;
//! - [`error`]: `ApiError` and its one mapping to gRPC status codes;
//! - [`metrics`], [`health`]: Prometheus metrics, health checks, /metrics /healthz /readyz.

pub mod access;
pub mod cluster_service;
pub mod config;
pub mod core;
pub mod daemon;
pub mod disk_guard;
pub mod election_assist;
pub mod error;
pub mod gate;
pub mod health;
pub mod identity;
pub mod join;
pub mod kv_service;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod read_index;
pub mod request;
pub mod startup;
pub mod tls;
pub mod write_batcher;

pub use config::{InitialCluster, NodeConfig};
pub use node::RunningNode;
pub use startup::StartupError;
