//! `ApiCalls`: what every client call passes through once the gate has admitted it — a
//! tracing span carrying the node, the RPC, the client's request id and the term; the
//! removed-node check; the call's deadline; and timing and counting by gRPC status code.
//!
//! The deadline is the client's `grpc-timeout`, capped by `--request-timeout-ms`. tonic's
//! server enforces the same deadline but answers `CANCELLED "Timeout expired"`; `kv.proto`
//! promises `DEADLINE_EXCEEDED` (and says a write's outcome is then unknown), so the call is
//! ended here a moment before tonic would ([`DEADLINE_MARGIN`]).
//!
//! It lives in the API room, not in [`NodeCore`], so the write and read paths know nothing of
//! metrics: the services time their calls here and hand the work to the core.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raftkv_proto::metadata;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::api::error::ApiError;
use crate::consensus::core::NodeCore;
use crate::ops::metrics::NodeMetrics;

/// How much earlier than tonic's own timer a call's deadline is enforced here.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// Serves client API calls for one node's services. Cheap to clone.
#[derive(Clone)]
pub struct ApiCalls {
    core: NodeCore,
    metrics: Arc<NodeMetrics>,
    /// Deadline of a call that carries none (`--request-timeout-ms`); also the longest one.
    max_deadline: Duration,
}

impl ApiCalls {
    pub fn new(core: NodeCore, metrics: Arc<NodeMetrics>, max_deadline: Duration) -> Self {
        Self {
            core,
            metrics,
            max_deadline,
        }
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
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.max_deadline, |d| d.min(self.max_deadline));
        let span = tracing::info_span!("request", node = core.id, rpc, request_id = %request_id, term);
        let call = async {
            // A removed node still answers Status (operators need to see it), nothing else.
            if core.removal.is_removed() && rpc != "Status" {
                return Err(ApiError::Removed(core.id).into());
            }
            match tokio::time::timeout(deadline.saturating_sub(DEADLINE_MARGIN), handler(request)).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::DeadlineExceeded {
                    this: core.id,
                    rpc,
                    deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                }
                .into()),
            }
        };
        let result = self.metrics.observe(rpc, call).instrument(span.clone()).await;
        if let Err(status) = &result {
            span.in_scope(|| tracing::debug!(code = ?status.code(), message = status.message(), "call failed"));
        }
        result
    }
}

/// A `grpc-timeout` header value (`<digits><unit>`, units H M S m u n), if well formed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_headers_parse_by_unit_and_bad_ones_are_ignored() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999u"), Some(Duration::from_micros(99_999)));
        for bad in ["", "m", "12", "12x", "-1S", "123456789S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
