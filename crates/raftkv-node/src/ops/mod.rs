//! **ops**: what operators and their tools see of a node — Prometheus metrics, health, and the
//! HTTP endpoints that serve them (`/metrics`, `/healthz`, `/readyz` on `--metrics-addr`).
//!
//! - [`metrics`]: `NodeMetrics`, every metric the node exports (a sink: it reads nothing);
//! - [`health`]: whether this node can usefully serve, recomputed in the background and
//!   published to the gRPC health service;
//! - [`http`]: the HTTP endpoints, which read the current state into the gauges on each scrape.
//!
//! May use: `consensus` and `admission` (to read state; they never call back). [`metrics`] is a
//! leaf any room may count into. A new metric goes in [`metrics`] and is fed where the event
//! happens, or read in [`http`] if it is state.

pub mod health;
pub mod http;
pub mod metrics;
