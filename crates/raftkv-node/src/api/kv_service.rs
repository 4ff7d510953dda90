//! `raftkv.v1.KV`: the data API. Requests are validated and converted by [`crate::api::request`];
//! writes go through Raft ([`NodeCore::write`]); reads pass the read barrier for their
//! consistency ([`NodeCore::read_barrier`]) and are served from the local state.

use raftkv_proto::v1::kv_server::Kv;
use raftkv_proto::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use raftkv_store::command::Response as SmResponse;
use tonic::{Request, Response, Status};

use crate::api::call::ApiCalls;
use crate::api::error::ApiError;
use crate::api::request::{
    consistency, delete_command, next_key, put_command, range_query, session, to_pb, txn_command, txn_op_response,
    validate_key,
};
use crate::consensus::core::NodeCore;

pub struct KvService {
    core: NodeCore,
    calls: ApiCalls,
}

impl KvService {
    pub fn new(calls: ApiCalls) -> Self {
        Self {
            core: calls.core().clone(),
            calls,
        }
    }
}

fn unexpected(resp: SmResponse) -> Status {
    Status::internal(format!("state machine gave an unexpected reply: {resp:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.calls
            .serve("Put", request, |request| async move {
                let session = session(request.metadata())?;
                let command = put_command(request.into_inner())?;
                match self.core.write(command, session).await? {
                    SmResponse::Put { revision, prev_kv } => Ok(Response::new(PutResponse {
                        header: Some(self.core.header()),
                        revision,
                        prev_kv: prev_kv.map(to_pb),
                    })),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.calls
            .serve("Get", request, |request| async move {
                let r = request.into_inner();
                validate_key(&r.key)?;
                self.core.read_barrier(consistency(r.consistency)?).await?;
                let kv = self.core.store.reader().get(&r.key).map_err(ApiError::from)?;
                Ok(Response::new(GetResponse {
                    header: Some(self.core.header()),
                    kv: kv.map(to_pb),
                }))
            })
            .await
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        self.calls
            .serve("Delete", request, |request| async move {
                let session = session(request.metadata())?;
                let command = delete_command(&request.into_inner())?;
                match self.core.write(command, session).await? {
                    SmResponse::Delete {
                        revision,
                        deleted,
                        prev_kvs,
                    } => Ok(Response::new(DeleteResponse {
                        header: Some(self.core.header()),
                        revision,
                        deleted,
                        prev_kv: prev_kvs.first().cloned().map(to_pb),
                        prev_kvs: prev_kvs.into_iter().map(to_pb).collect(),
                    })),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.calls
            .serve("Range", request, |request| async move {
                let r = request.into_inner();
                let query = range_query(&r)?;
                self.core.read_barrier(consistency(r.consistency)?).await?;
                let result = self.core.store.reader().range(&query).map_err(ApiError::from)?;
                let mut header = self.core.header();
                header.revision = result.revision;
                let next = match (result.more, result.kvs.last()) {
                    (true, Some(last)) => next_key(query.reverse, &last.key),
                    _ => Vec::new(),
                };
                Ok(Response::new(RangeResponse {
                    header: Some(header),
                    kvs: result.kvs.into_iter().map(to_pb).collect(),
                    more: result.more,
                    count: result.count,
                    next_key: next,
                }))
            })
            .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.calls
            .serve("Txn", request, |request| async move {
                let session = session(request.metadata())?;
                let command = txn_command(request.into_inner())?;
                match self.core.write(command, session).await? {
                    SmResponse::Txn {
                        revision,
                        succeeded,
                        results,
                    } => Ok(Response::new(TxnResponse {
                        header: Some(self.core.header()),
                        succeeded,
                        responses: results.into_iter().map(|r| txn_op_response(revision, r)).collect(),
                        revision,
                    })),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }
}
