//! The key-value calls: put, get, range, delete, transactions and the compare-and-swap
//! helpers built on them, and degraded reads ([`ReadOptions::allow_degraded`]): a stale read,
//! clearly marked ([`Read::degraded`]), when a linearizable one cannot be had in time.

use std::future::Future;
use std::time::Duration;

use raftkv_proto::v1::kv_client::KvClient;
use raftkv_proto::v1::{
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::call::CallKind;
use super::{Client, MAX_REPLY_BYTES};
use crate::error::ClientError;
use crate::txn;

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES)
}

/// How a read is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    pub consistency: Consistency,
    /// Overrides the configured deadline.
    pub timeout: Option<Duration>,
    /// When a linearizable read cannot be had in time (no quorum, no leader), answer with a
    /// stale read instead of an error, marked `degraded`. Off by default.
    pub allow_degraded: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            consistency: Consistency::Linearizable,
            timeout: None,
            allow_degraded: false,
        }
    }
}

/// A read's answer, and whether it is a degraded (stale) substitute for a linearizable read.
#[derive(Debug, Clone, PartialEq)]
pub struct Read<T> {
    pub response: T,
    /// True when a linearizable read was asked for but this answer is a stale read; its
    /// header's `revision` and `node_id` tell how fresh it is and who gave it.
    pub degraded: bool,
}

impl Client {
    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse, ClientError> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
            lease: 0,
        };
        self.put_request(req, None).await
    }

    /// Sends a full PutRequest, with an optional deadline overriding the configured one.
    pub async fn put_request(&self, req: PutRequest, timeout: Option<Duration>) -> Result<PutResponse, ClientError> {
        self.call(CallKind::Write, timeout, req, |ch, r| async move {
            kv_client(ch).put(r).await
        })
        .await
    }

    /// Reads `key` linearizably.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<GetResponse, ClientError> {
        self.get_with(key, Consistency::Linearizable, None).await
    }

    /// Reads `key` at the given consistency, with an optional deadline.
    pub async fn get_with(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
        timeout: Option<Duration>,
    ) -> Result<GetResponse, ClientError> {
        let opts = ReadOptions {
            consistency,
            timeout,
            allow_degraded: false,
        };
        Ok(self.get_opts(key, opts).await?.response)
    }

    /// Reads `key` with full control over consistency, deadline and degradation.
    pub async fn get_opts(&self, key: impl Into<Vec<u8>>, opts: ReadOptions) -> Result<Read<GetResponse>, ClientError> {
        let key = key.into();
        self.read_degradable(opts, |consistency, timeout| {
            let req = GetRequest {
                key: key.clone(),
                consistency: consistency as i32,
            };
            async move {
                self.call(CallKind::Read, Some(timeout), req, |ch, r| async move {
                    kv_client(ch).get(r).await
                })
                .await
            }
        })
        .await
    }

    /// Reads a range of keys; the consistency is the request's.
    pub async fn range(&self, req: RangeRequest, timeout: Option<Duration>) -> Result<RangeResponse, ClientError> {
        let consistency = Consistency::try_from(req.consistency).unwrap_or(Consistency::Linearizable);
        let opts = ReadOptions {
            consistency,
            timeout,
            allow_degraded: false,
        };
        Ok(self.range_opts(req, opts).await?.response)
    }

    /// Reads a range of keys with full control over consistency, deadline and degradation
    /// (the request's own `consistency` field is replaced by `opts.consistency`).
    pub async fn range_opts(&self, req: RangeRequest, opts: ReadOptions) -> Result<Read<RangeResponse>, ClientError> {
        self.read_degradable(opts, |consistency, timeout| {
            let req = RangeRequest {
                consistency: consistency as i32,
                ..req.clone()
            };
            async move {
                self.call(CallKind::Read, Some(timeout), req, |ch, r| async move {
                    kv_client(ch).range(r).await
                })
                .await
            }
        })
        .await
    }

    /// Runs a read; with `allow_degraded`, a linearizable read that fails for want of a quorum
    /// or leader is replaced by a stale read in the last quarter of the deadline.
    async fn read_degradable<T, F, Fut>(&self, opts: ReadOptions, read: F) -> Result<Read<T>, ClientError>
    where
        F: Fn(Consistency, Duration) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let total = opts.timeout.unwrap_or(self.inner.config.timeout);
        let linearizable = matches!(opts.consistency, Consistency::Linearizable | Consistency::Unspecified);
        if !(opts.allow_degraded && linearizable) {
            return Ok(Read {
                response: read(opts.consistency, total).await?,
                degraded: false,
            });
        }
        let reserve = (total / 4).max(Duration::from_millis(200)).min(total);
        let started = Instant::now();
        match read(Consistency::Linearizable, total - reserve).await {
            Ok(response) => Ok(Read {
                response,
                degraded: false,
            }),
            Err(ClientError::Unavailable(why)) => {
                tracing::warn!("linearizable read unavailable ({why}); serving a degraded stale read");
                let left = total.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
                Ok(Read {
                    response: read(Consistency::Stale, left).await?,
                    degraded: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResponse, ClientError> {
        let req = DeleteRequest {
            key: key.into(),
            ..Default::default()
        };
        self.delete_request(req, None).await
    }

    /// Sends a full DeleteRequest (a key, a prefix or an interval), with an optional deadline.
    pub async fn delete_request(
        &self,
        req: DeleteRequest,
        timeout: Option<Duration>,
    ) -> Result<DeleteResponse, ClientError> {
        self.call(CallKind::Write, timeout, req, |ch, r| async move {
            kv_client(ch).delete(r).await
        })
        .await
    }

    /// Sets `key` to `new` only if its value is `expected`. `succeeded` in the reply tells
    /// whether it did; if not, the reply's single response holds the current key-value.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: impl Into<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<TxnResponse, ClientError> {
        let key = key.into();
        let req = TxnRequest {
            compare: vec![txn::value(key.clone(), txn::Op::Equal, expected)],
            success: vec![txn::put(key.clone(), new)],
            failure: vec![txn::get(key)],
        };
        self.txn(req, None).await
    }

    /// Creates `key` with `value` only if it does not exist yet (`succeeded` says whether).
    pub async fn put_if_absent(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<TxnResponse, ClientError> {
        let key = key.into();
        let req = TxnRequest {
            compare: vec![txn::missing(key.clone())],
            success: vec![txn::put(key.clone(), value)],
            failure: vec![txn::get(key)],
        };
        self.txn(req, None).await
    }

    /// Runs a transaction (compares, then the success or failure operations), atomically.
    pub async fn txn(&self, req: TxnRequest, timeout: Option<Duration>) -> Result<TxnResponse, ClientError> {
        self.call(CallKind::Write, timeout, req, |ch, r| async move {
            kv_client(ch).txn(r).await
        })
        .await
    }
}
