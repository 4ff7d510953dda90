//! raftkv-node: one raftkv node. The `raftkvd` binary is a thin wrapper around
//! [`boot::daemon::main`].
//!
//! The crate is laid out in rooms by concern; each room's `mod.rs` says what it is for and
//! what it may use:
//!
//! | room | what lives there | where a new … goes |
//! |---|---|---|
//! | [`boot`] | the `raftkvd` command line, `NodeConfig`, data-dir identity and checks, bootstrap, join, TLS, `RunningNode` | flag, start-up step, background task |
//! | [`api`] | the public gRPC services, request validation and conversion, API limits, the one `ApiError` → gRPC mapping | RPC or public service (watch, leases) |
//! | [`admission`] | the client gate: tokens and roles, call slots, request sizes, the disk-space guard | limit or kind of refusal |
//! | [`consensus`] | `NodeCore` (write path, read barrier), write batching, read index, membership, removal, election assist, the peer transport | Raft mechanism, peer RPC, lease expiry |
//! | [`etcd`] | etcd's v3 API on the second client port (`--etcd-addr`): each call translated into the native path and back | etcd RPC or option |
//! | [`ops`] | Prometheus metrics, health, the `/metrics` `/healthz` `/readyz` endpoints | metric or health condition |
//!
//! Dependency direction between rooms (an arrow is "may use"): boot → everything;
//! api → consensus, ops::metrics; admission → ops::metrics; ops → consensus, admission;
//! consensus → admission::disk_guard; etcd → api, consensus. Two leaves every room may use: `api::error` (the answers
//! clients get) and `ops::metrics` (a sink that reads nothing). No file imports one that
//! imports it back (tests/layout.rs checks it).

pub mod admission;
pub mod api;
pub mod boot;
pub mod consensus;
pub mod etcd;
pub mod ops;

pub use boot::config::{InitialCluster, NodeConfig};
pub use boot::node::RunningNode;
pub use boot::startup::StartupError;

// The flat module paths of before the regrouping into rooms (2026-12), kept so code written
// against them still compiles.
pub use admission::{access, disk_guard, gate};
pub use api::{cluster_service, error, kv_service, request};
pub use boot::{config, daemon, identity, join, node, startup, tls};
pub use consensus::transport::{network, peer_service};
pub use consensus::{core, election_assist, membership, read_index, write_batcher};
pub use ops::{health, metrics};
