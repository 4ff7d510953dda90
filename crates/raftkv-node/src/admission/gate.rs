//! `ClientGate`: the client API's front door, in front of the gRPC services, where a request
//! is judged by its headers alone, before its body is read or decoded:
//!
//! 1. **Token** ([`AccessControl`]): with `--auth-file`, a call without a valid token, or whose
//!    token lacks the role its RPC needs, is refused here, so a stranger cannot make the node
//!    buffer and decode request bodies.
//! 2. **Admission** ([`Admission`]): a call takes one of `--max-inflight-requests` slots for
//!    as long as its handler runs (until the response headers, for a stream); with none free
//!    it is refused at once with RESOURCE_EXHAUSTED, so a flood is shed instead of queued.
//! 3. **Request size**: gRPC (tonic) refuses a message over the decoding limit with
//!    OUT_OF_RANGE ("decoded message length too large"), which tells a client nothing useful;
//!    every other limit of ours answers INVALID_ARGUMENT or RESOURCE_EXHAUSTED. That refusal is
//!    a trailers-only response (the status is in the response headers), so the gate rewrites
//!    those headers on the way out.
//!
//! Refusals are counted in `raftkv_requests_total` by RPC and code, like every other answer.
//! Health checks and reflection do not pass through the gate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::OwnedSemaphorePermit;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::admission::access::{AccessControl, Admission};
use crate::api::error::ApiError;
use crate::ops::metrics::NodeMetrics;

/// What every gated service of a node shares.
pub struct GateConfig {
    pub node: u64,
    pub access: Option<Arc<AccessControl>>,
    pub admission: Admission,
    pub metrics: Arc<NodeMetrics>,
}

impl GateConfig {
    /// The token check, then a call slot.
    fn admit(&self, rpc: &str, headers: &HeaderMap) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Some(access) = &self.access {
            access.authorize(rpc, &MetadataMap::from_headers(headers.clone()))?;
        }
        self.admission.admit(self.node)
    }
}

/// A gRPC service behind the gate (see the module docs).
#[derive(Clone)]
pub struct ClientGate<S> {
    inner: S,
    config: Arc<GateConfig>,
    /// The decoding limit `inner` was given, in bytes (named in the too-large message).
    limit: usize,
}

impl<S> ClientGate<S> {
    pub fn new(inner: S, config: Arc<GateConfig>, limit: usize) -> Self {
        Self { inner, config, limit }
    }
}

impl<S: NamedService> NamedService for ClientGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientGate<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let rpc = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let slot = match self.config.admit(&rpc, request.headers()) {
            Ok(slot) => slot,
            Err(e) => {
                let status = Status::from(e);
                self.config.metrics.count(&rpc, status.code());
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            drop(slot);
            rename_too_large(response.headers_mut(), limit);
            Ok(response)
        })
    }
}

/// Rewrites a trailers-only "message too large" status in `headers`; leaves anything else.
pub fn rename_too_large(headers: &mut HeaderMap, limit: usize) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::OutOfRange || !status.message().contains("message length too large") {
        return;
    }
    let clearer = Status::resource_exhausted(format!(
        "the request is larger than a node accepts ({limit} bytes; {}). Send smaller requests: values up to 1 MiB, \
         and fewer operations per transaction",
        status.message()
    ));
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if clearer.add_header(headers).is_err() {
        tracing::warn!("could not rewrite a message-too-large status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        status.add_header(&mut h).unwrap();
        h
    }

    #[test]
    fn a_too_large_message_becomes_resource_exhausted_naming_the_limit() {
        let mut h = headers_of(Status::out_of_range(
            "Error, decoded message length too large: found 5243000 bytes, the limit is: 4194304 bytes",
        ));
        rename_too_large(&mut h, 4_194_304);
        let s = Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("4194304 bytes"), "{}", s.message());
        assert!(s.message().contains("found 5243000 bytes"), "{}", s.message());
    }

    #[test]
    fn every_other_status_passes_unchanged() {
        for status in [
            Status::out_of_range("a range"),
            Status::invalid_argument("key is empty"),
        ] {
            let mut h = headers_of(status.clone());
            rename_too_large(&mut h, 10);
            let s = Status::from_header_map(&h).unwrap();
            assert_eq!((s.code(), s.message()), (status.code(), status.message()));
        }
        let mut none = HeaderMap::new();
        rename_too_large(&mut none, 10);
        assert!(none.is_empty());
    }
}
