//! `RequestSize`: a request message over the client API's size limit is refused with
//! RESOURCE_EXHAUSTED and a message naming the limit and what to do.
//!
//! gRPC itself (tonic) refuses such a message before any handler sees it, with OUT_OF_RANGE
//! ("decoded message length too large"); that code tells a client nothing useful, and every
//! other limit of ours answers INVALID_ARGUMENT or RESOURCE_EXHAUSTED. The refusal is a
//! trailers-only response (the status is in the response headers), so this wrapper around a
//! gRPC service rewrites those headers on the way out; nothing else passes through it changed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// A gRPC service whose too-large-request refusals are renamed (see the module docs).
#[derive(Debug, Clone)]
pub struct RequestSize<S> {
    inner: S,
    limit: usize,
}

impl<S> RequestSize<S> {
    /// `limit`: the decoding limit `inner` was given, in bytes (named in the message).
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<S: NamedService> NamedService for RequestSize<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestSize<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
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
