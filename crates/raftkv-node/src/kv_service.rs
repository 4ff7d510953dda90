//! `raftkv.v1.KV`: validates client requests, sends writes through Raft and serves reads at
//! the consistency asked for.

use raftkv_proto::v1::kv_server::Kv;
use raftkv_proto::v1::{
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, KeyValue as PbKeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse,
};
use raftkv_store::command::{Command, KeyValue, Response as SmResponse};
use raftkv_store::{prefix_end, RangeQuery};
use tonic::{Request, Response, Status};

use crate::config::{MAX_KEY_BYTES, MAX_RANGE_LIMIT, MAX_RANGE_REPLY_BYTES, MAX_VALUE_BYTES};
use crate::core::NodeCore;
use crate::error::ApiError;

pub struct KvService {
    core: NodeCore,
}

impl KvService {
    pub fn new(core: NodeCore) -> Self {
        Self { core }
    }
}

fn to_pb(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

/// Checks a key against the API's rules.
pub fn validate_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidArgument(
            "key is empty; keys must be 1 byte or more".into(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn validate_value(value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (1 MiB)",
            value.len()
        )));
    }
    Ok(())
}

fn consistency(raw: i32) -> Result<Consistency, ApiError> {
    Consistency::try_from(raw).map_err(|_| {
        ApiError::InvalidArgument(format!(
            "unknown consistency {raw}; use 1 (linearizable) or 2 (stale)"
        ))
    })
}

/// Turns a RangeRequest into a store query, refusing malformed ranges.
pub fn range_query(r: &RangeRequest) -> Result<RangeQuery, ApiError> {
    let (start, end) = if !r.prefix.is_empty() {
        if !r.start.is_empty() || !r.end.is_empty() {
            return Err(ApiError::InvalidArgument(
                "give either prefix or start/end, not both".into(),
            ));
        }
        validate_key(&r.prefix)?;
        (r.prefix.clone(), prefix_end(&r.prefix))
    } else {
        for k in [&r.start, &r.end] {
            if k.len() > MAX_KEY_BYTES {
                return Err(ApiError::InvalidArgument(format!(
                    "range bound is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                    k.len()
                )));
            }
        }
        let end = if r.end.is_empty() {
            None
        } else {
            Some(r.end.clone())
        };
        if let Some(end) = &end {
            if *end <= r.start {
                return Err(ApiError::InvalidArgument(format!(
                    "empty or inverted range: end {:?} must be greater than start {:?}",
                    String::from_utf8_lossy(end),
                    String::from_utf8_lossy(&r.start)
                )));
            }
        }
        (r.start.clone(), end)
    };
    let limit = match r.limit {
        0 => MAX_RANGE_LIMIT,
        n => n.min(MAX_RANGE_LIMIT),
    };
    Ok(RangeQuery {
        start,
        end,
        limit: limit as usize,
        keys_only: r.keys_only,
        count_only: r.count_only,
        reverse: r.reverse,
        byte_budget: Some(MAX_RANGE_REPLY_BYTES),
    })
}

fn unexpected(resp: SmResponse) -> Status {
    Status::internal(format!("state machine gave an unexpected reply: {resp:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = request.into_inner();
        validate_key(&r.key)?;
        validate_value(&r.value)?;
        let command = Command::Put {
            key: r.key,
            value: r.value,
            prev_kv: r.prev_kv,
        };
        match self.core.write(command).await? {
            SmResponse::Put { revision, prev_kv } => Ok(Response::new(PutResponse {
                header: Some(self.core.header()),
                revision,
                prev_kv: prev_kv.map(to_pb),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = request.into_inner();
        validate_key(&r.key)?;
        self.core.read_barrier(consistency(r.consistency)?).await?;
        let kv = self
            .core
            .store
            .reader()
            .get(&r.key)
            .map_err(ApiError::from)?;
        Ok(Response::new(GetResponse {
            header: Some(self.core.header()),
            kv: kv.map(to_pb),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = request.into_inner();
        validate_key(&r.key)?;
        let command = Command::Delete {
            key: r.key,
            prev_kv: r.prev_kv,
        };
        match self.core.write(command).await? {
            SmResponse::Delete {
                revision,
                deleted,
                prev_kv,
            } => Ok(Response::new(DeleteResponse {
                header: Some(self.core.header()),
                revision,
                deleted,
                prev_kv: prev_kv.map(to_pb),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let r = request.into_inner();
        let query = range_query(&r)?;
        self.core.read_barrier(consistency(r.consistency)?).await?;
        let result = self
            .core
            .store
            .reader()
            .range(&query)
            .map_err(ApiError::from)?;
        Ok(Response::new(RangeResponse {
            header: Some(self.core.header()),
            kvs: result.kvs.into_iter().map(to_pb).collect(),
            more: result.more,
            count: result.count,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(start: &str, end: &str, prefix: &str) -> RangeRequest {
        RangeRequest {
            start: start.into(),
            end: end.into(),
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    #[test]
    fn prefix_becomes_a_half_open_interval() {
        let q = range_query(&req("", "", "user/")).unwrap();
        assert_eq!(
            (q.start.as_slice(), q.end.as_deref()),
            (&b"user/"[..], Some(&b"user0"[..]))
        );
        assert_eq!(q.limit as u64, MAX_RANGE_LIMIT);
    }

    #[test]
    fn malformed_ranges_are_invalid_arguments() {
        for (s, e, p) in [("b", "a", ""), ("a", "a", ""), ("a", "", "p")] {
            let err = range_query(&req(s, e, p)).unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidArgument(_)),
                "{s}..{e} prefix {p}: {err:?}"
            );
        }
    }

    #[test]
    fn open_ranges_are_allowed() {
        let q = range_query(&req("", "", "")).unwrap();
        assert_eq!((q.start.len(), q.end), (0, None));
        let q = range_query(&req("m", "", "")).unwrap();
        assert_eq!(q.end, None);
    }

    #[test]
    fn key_limits() {
        assert!(validate_key(b"").is_err());
        assert!(validate_key(&vec![b'k'; MAX_KEY_BYTES]).is_ok());
        assert!(validate_key(&vec![b'k'; MAX_KEY_BYTES + 1]).is_err());
        assert!(validate_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(validate_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
    }
}
