//! `ApiCalls`: what every client call passes through once the gate has admitted it — a
//! tracing span carrying the node, the RPC, the client's request id and the term; the
//! removed-node check; and timing and counting by gRPC status code.
//!
//! It lives in the API room, not in [`NodeCore`], so the write and read paths know nothing of
//! metrics: the services time their calls here and hand the work to the core.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;

use raftkv_proto::metadata;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::api::error::ApiError;
use crate::consensus::core::NodeCore;
use crate::ops::metrics::NodeMetrics;

/// Serves client API calls for one node's services. Cheap to clone.
#[derive(Clone)]
pub struct ApiCalls {
    core: NodeCore,
    metrics: Arc<NodeMetrics>,
}

impl ApiCalls {
    pub fn new(core: NodeCore, metrics: Arc<NodeMetrics>) -> Self {
        Self { core, metrics }
    }

    /// The node the calls are served by.
    pub fn core(&self) -> &NodeCore {
        &self.core
    }

    /// Runs one client API call: in a tracing span carrying the node, the RPC, the client's
    /// request id and the term, timed and counted by status code. Tokens and call slots were
    /// dealt with before the request was decoded ([`crate::admission::gate`]).
    pub async fn serve<T, R, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<T>,
        handler: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let core = &self.core;
        let request_id = request
            .metadata()
            .get(metadata::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let term = core.raft.metrics().borrow_watched().current_term;
        let span = tracing::info_span!("request", node = core.id, rpc, request_id = %request_id, term);
        let call = async {
            // A removed node still answers Status (operators need to see it), nothing else.
            if core.removal.is_removed() && rpc != "Status" {
                return Err(ApiError::Removed(core.id).into());
            }
            handler(request).await
        };
        let result = self.metrics.observe(rpc, call).instrument(span.clone()).await;
        if let Err(status) = &result {
            span.in_scope(|| tracing::debug!(code = ?status.code(), message = status.message(), "call failed"));
        }
        result
    }
}
