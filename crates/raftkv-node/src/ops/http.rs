//! The node's HTTP endpoints on `--metrics-addr`: `/metrics` (Prometheus text), `/healthz`
//! (alive) and `/readyz` (SERVING, else 503 with the reason).
//!
//! A scrape reads the current state of Raft, the store, the disk guard and the read path into
//! [`StateReadings`] and hands it to [`NodeMetrics`]: observing is one-way, nothing it reads
//! knows it is being watched.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consensus::core::NodeCore;
use crate::ops::health::HealthState;
use crate::ops::metrics::{NodeMetrics, StateReadings};

/// Reads the state the gauges show.
pub async fn readings(core: &NodeCore, health: &HealthState) -> StateReadings {
    let raft = core.raft.metrics().borrow_watched().clone();
    let committed_index = Some(raft.local_committed.map_or(0, |c| c.index));
    StateReadings {
        raft,
        committed_index,
        db_size_bytes: core.store.size_on_disk(),
        disk_free_bytes: core.disk.free_bytes(),
        disk_space_alarm: core.disk.alarm(),
        serving: health.current().serving,
        linearizable_reads: core.read_path.reads.requests(),
        read_index_rounds: core.read_path.reads.rounds(),
        leadership_confirmations: core.read_path.confirm.rounds(),
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<NodeMetrics>,
    core: NodeCore,
    health: HealthState,
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    let body = s.metrics.render(&readings(&s.core, &s.health).await);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    let h = s.health.current();
    if h.serving {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", h.reason))
    }
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (SERVING) until `shutdown`.
pub fn serve_http(
    listener: TcpListener,
    metrics: Arc<NodeMetrics>,
    core: NodeCore,
    health: HealthState,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, core, health });
    tokio::spawn(async move {
        let signal = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
            tracing::error!("metrics server failed: {e}");
        }
    })
}
