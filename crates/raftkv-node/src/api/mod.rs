//! **api**: the public gRPC services (`raftkv.v1.KV`, `raftkv.v1.Watch`, `raftkv.v1.Lease`, `raftkv.v1.Cluster`) — what a client
//! can ask, how each request is validated and turned into a store command or query, and the
//! one mapping from [`ApiError`](error::ApiError) to gRPC status codes.
//!
//! - [`kv_service`]: the data API (put, get, delete, range, txn);
//! - [`cluster_service`]: status, membership, snapshots, backups;
//! - [`watch_service`]: watching changes (`raftkv.v1.Watch`), from the store's watch history;
//! - [`lease_service`]: leases (`raftkv.v1.Lease`), expired by `consensus::lease_keeper`;
//! - [`request`]: validating requests and converting messages both ways;
//! - [`limits`]: the sizes and counts the API accepts;
//! - [`call`]: what every admitted call passes through (span, removed-node check, timing);
//! - [`error`]: `ApiError` and its gRPC mapping.
//!
//! May use: `consensus` (to write and to read safely), `admission::disk_guard` through it,
//! `ops::metrics` (to time calls). [`error`] is the one leaf every room may use: it is the
//! vocabulary all of them answer clients in.
//! A new RPC of the native API gets a handler in its service file and a validator in
//! [`request`]; a new public service (watch, leases) gets a file of its own here. etcd's v3 API
//! is the `etcd` room beside this one: it translates into these services' path and back.

pub mod call;
pub mod cluster_service;
pub mod error;
pub mod kv_service;
pub mod lease_service;
pub mod limits;
pub mod request;
pub mod watch_service;
