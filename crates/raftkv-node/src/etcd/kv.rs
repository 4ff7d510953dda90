//! `etcdserverpb.KV` on the etcd port: Range, Put, DeleteRange and Txn with etcd's semantics,
//! served through the native write path and read barrier; Compact refused.
//!
//! raftkv keeps no old versions of keys (history for watches only), so a read `at` a past
//! revision is answered exactly as etcd answers one behind its compaction point, and a read at
//! the current revision is served.

use std::sync::Arc;

use raftkv_proto::etcd::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcd::etcdserverpb::kv_server::Kv;
use raftkv_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_proto::etcd::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, CompactionResponse, Compare as EtcdCompare,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
};
use raftkv_proto::etcd::mvccpb::KeyValue as EtcdKeyValue;
use raftkv_proto::v1::Consistency;
use raftkv_store::command::{
    CmpOp, Command, Compare, CompareTarget, KeyValue, Response as SmResponse, Txn, TxnOp, TxnOpResult,
};
use raftkv_store::RangeQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::call::ApiCalls;
use crate::api::error::ApiError;
use crate::api::limits::MAX_TXN_OPS;
use crate::api::request::{session, to_pb, validate_key, validate_value};
use crate::consensus::core::NodeCore;
use crate::etcd::convert::{self, bounds, key_value, message, non_negative, selection, KeySelection};
use crate::etcd::forward::{forwarded_request, LeaderForwarder};

/// The most bytes of keys and values one etcd Range answers with (etcd answers whole ranges;
/// past this, the caller is asked to use a limit).
const MAX_RANGE_BYTES: usize = 64 * 1024 * 1024;

pub struct EtcdKv {
    core: NodeCore,
    calls: ApiCalls,
    forwarder: Arc<LeaderForwarder>,
}

/// What became of a write: applied here, or passed on to the leader, whose answer this is.
enum Done<R> {
    Applied(SmResponse),
    Forwarded(Response<R>),
}

/// How long a write waits before trying again when no leader is known or the leader it knows
/// cannot be reached (a failover under way).
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_millis(25);

/// Whether a forwarded call failed before it was sent (the leader's port refused the
/// connection): only then may it be sent again.
fn not_sent(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("tcp connect error") || status.message().contains("Connection refused"))
}

impl EtcdKv {
    /// Writes that reach this node when it does not lead go on through `forwarder`.
    pub fn new(calls: ApiCalls, forwarder: Arc<LeaderForwarder>) -> Self {
        Self {
            core: calls.core().clone(),
            calls,
            forwarder,
        }
    }

    /// A store key-value as etcd's, with the lease it is attached to.
    fn etcd_kv(&self, kv: KeyValue) -> Result<EtcdKeyValue, Status> {
        let lease = self.core.store.reader().lease_of(&kv.key).map_err(ApiError::from)?;
        Ok(key_value(to_pb(kv), convert::revision(lease)))
    }

    /// A key-value read at an older revision: its lease is known only while the key has not
    /// changed since (raftkv keeps no old leases); otherwise 0.
    fn historic_etcd_kv(&self, kv: KeyValue) -> Result<EtcdKeyValue, Status> {
        let now = self.core.store.reader().get(&kv.key).map_err(ApiError::from)?;
        if now.is_some_and(|now| now.mod_revision == kv.mod_revision) {
            return self.etcd_kv(kv);
        }
        Ok(key_value(to_pb(kv), 0))
    }

    fn header(&self) -> Option<raftkv_proto::etcd::etcdserverpb::ResponseHeader> {
        convert::header(Some(self.core.header()))
    }

    /// Writes `command` here, or, on a follower, has `forward` send the original request to the
    /// leader's etcd port. As etcd's followers hold a proposal until there is a leader, a write
    /// that finds no leader, or a leader that cannot be reached, waits and tries again — within
    /// the call's deadline, and only while nothing has been sent.
    async fn write<R, F, Fut>(
        &self,
        command: Command,
        md: &tonic::metadata::MetadataMap,
        forward: F,
    ) -> Result<Done<R>, Status>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        let session = session(md)?;
        loop {
            match self.core.write(command.clone(), session).await {
                Ok(response) => return Ok(Done::Applied(response)),
                Err(ApiError::NoLeader { .. }) if self.forwarder.should_forward(md) => {}
                Err(ApiError::NotLeader { leader_addr, .. }) if self.forwarder.should_forward(md) => {
                    match self.forwarder.kv(&leader_addr).await {
                        Ok(kv) => match forward(kv).await {
                            Ok(reply) => return Ok(Done::Forwarded(reply)),
                            Err(s) if not_sent(&s) => self.forwarder.forget().await,
                            Err(s) => return Err(s),
                        },
                        // The leader it knows did not answer: a failover under way.
                        Err(s) if s.code() == tonic::Code::Unavailable => {}
                        Err(s) => return Err(s),
                    }
                }
                Err(e) => return Err(status(e)),
            }
            tokio::time::sleep(LEADER_WAIT).await;
        }
    }
}

/// A native error as etcd's clients expect it.
fn status(e: ApiError) -> Status {
    match e {
        ApiError::LeaseNotFound(_) => Status::not_found(message::LEASE_NOT_FOUND),
        other => other.into(),
    }
}

fn unexpected(resp: SmResponse) -> Status {
    Status::internal(format!("state machine gave an unexpected reply: {resp:?}"))
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "raftkv's etcd API does not support {what} (see docs/etcd-compat.md)"
    ))
}

/// The store query for an etcd range (every matching key, up to the byte bound).
fn range_query(r: &RangeRequest, sel: &KeySelection, limit: usize, count_only: bool) -> Result<RangeQuery, Status> {
    let (start, end) = bounds(sel);
    if !end.is_empty() && end <= start {
        // etcd answers an empty range for an inverted one.
        return Ok(RangeQuery {
            start: start.clone(),
            end: Some(start),
            limit: 0,
            keys_only: true,
            count_only: true,
            reverse: false,
            byte_budget: None,
        });
    }
    Ok(RangeQuery {
        start,
        end: (!end.is_empty()).then_some(end),
        limit,
        keys_only: r.keys_only,
        count_only,
        reverse: r.sort_order == SortOrder::Descend as i32 && r.sort_target == SortTarget::Key as i32,
        byte_budget: Some(MAX_RANGE_BYTES),
    })
}

/// Whether `kv` passes the request's min/max revision filters.
fn passes_filters(r: &RangeRequest, kv: &KeyValue) -> bool {
    let within =
        |value: u64, min: i64, max: i64| (min <= 0 || value >= min as u64) && (max <= 0 || value <= max as u64);
    within(kv.mod_revision, r.min_mod_revision, r.max_mod_revision)
        && within(kv.create_revision, r.min_create_revision, r.max_create_revision)
}

fn sort(r: &RangeRequest, kvs: &mut [KeyValue]) -> Result<(), Status> {
    let order =
        SortOrder::try_from(r.sort_order).map_err(|_| Status::invalid_argument("etcdserver: unknown sort order"))?;
    let target =
        SortTarget::try_from(r.sort_target).map_err(|_| Status::invalid_argument("etcdserver: unknown sort target"))?;
    if order == SortOrder::None {
        return Ok(());
    }
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
    Ok(())
}

fn cmp_op(raw: i32) -> Result<CmpOp, Status> {
    match compare::CompareResult::try_from(raw) {
        Ok(compare::CompareResult::Equal) => Ok(CmpOp::Equal),
        Ok(compare::CompareResult::NotEqual) => Ok(CmpOp::NotEqual),
        Ok(compare::CompareResult::Less) => Ok(CmpOp::Less),
        Ok(compare::CompareResult::Greater) => Ok(CmpOp::Greater),
        Err(_) => Err(Status::invalid_argument(format!(
            "etcdserver: unknown compare result {raw}"
        ))),
    }
}

fn txn_compare(c: EtcdCompare) -> Result<Compare, Status> {
    if !c.range_end.is_empty() {
        return Err(unimplemented("compares over a key range (range_end)"));
    }
    validate_key(&c.key)?;
    let op = cmp_op(c.result)?;
    let number = |n: i64| non_negative("a compared revision or version", n);
    let target = match c.target_union {
        Some(compare::TargetUnion::Value(v)) => {
            validate_value(&v)?;
            CompareTarget::Value(op, v.into())
        }
        Some(compare::TargetUnion::Version(n)) => CompareTarget::Version(op, number(n)?),
        Some(compare::TargetUnion::CreateRevision(n)) => CompareTarget::CreateRevision(op, number(n)?),
        Some(compare::TargetUnion::ModRevision(n)) => CompareTarget::ModRevision(op, number(n)?),
        Some(compare::TargetUnion::Lease(_)) => return Err(unimplemented("compares on a key's lease")),
        // etcd compares a missing operand as its zero value.
        None => match compare::CompareTarget::try_from(c.target) {
            Ok(compare::CompareTarget::Value) => CompareTarget::Value(op, Vec::new().into()),
            Ok(compare::CompareTarget::Version) => CompareTarget::Version(op, 0),
            Ok(compare::CompareTarget::Create) => CompareTarget::CreateRevision(op, 0),
            Ok(compare::CompareTarget::Mod) => CompareTarget::ModRevision(op, 0),
            Ok(compare::CompareTarget::Lease) => return Err(unimplemented("compares on a key's lease")),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown compare target {}",
                    c.target
                )))
            }
        },
    };
    Ok(Compare { key: c.key, target })
}

fn put_op(p: PutRequest) -> Result<TxnOp, Status> {
    if p.ignore_value || p.ignore_lease {
        return Err(unimplemented("ignore_value / ignore_lease on a put"));
    }
    if p.key.is_empty() {
        return Err(Status::invalid_argument(message::KEY_NOT_PROVIDED));
    }
    validate_key(&p.key)?;
    validate_value(&p.value)?;
    Ok(match non_negative("lease", p.lease)? {
        0 => TxnOp::Put {
            key: p.key,
            value: p.value,
            prev_kv: p.prev_kv,
        },
        lease => TxnOp::PutLeased {
            key: p.key,
            value: p.value,
            prev_kv: p.prev_kv,
            lease,
        },
    })
}

fn delete_op(d: &DeleteRangeRequest) -> Result<TxnOp, Status> {
    Ok(match selection(&d.key, &d.range_end)? {
        KeySelection::One(key) => {
            validate_key(&key)?;
            TxnOp::Delete {
                key,
                prev_kv: d.prev_kv,
            }
        }
        KeySelection::Range { start, end } => TxnOp::DeleteRange {
            start,
            end: (!end.is_empty()).then(|| end.into()),
            prev_kv: d.prev_kv,
        },
    })
}

/// A transaction operation, and for a read the etcd request it answers (its options shape the
/// answer after the read).
fn txn_op(op: RequestOp) -> Result<(TxnOp, Option<RangeRequest>), Status> {
    match op.request {
        Some(request_op::Request::RequestPut(p)) => Ok((put_op(p)?, None)),
        Some(request_op::Request::RequestDeleteRange(d)) => Ok((delete_op(&d)?, None)),
        Some(request_op::Request::RequestRange(r)) => {
            if r.revision != 0 {
                return Err(unimplemented("range reads at a revision inside a transaction"));
            }
            let op = match selection(&r.key, &r.range_end)? {
                KeySelection::One(key) => {
                    validate_key(&key)?;
                    TxnOp::Get { key }
                }
                KeySelection::Range { start, end } => TxnOp::Range {
                    start,
                    end: (!end.is_empty()).then(|| end.into()),
                },
            };
            Ok((op, Some(r)))
        }
        Some(request_op::Request::RequestTxn(_)) => Err(unimplemented("nested transactions")),
        None => Err(Status::invalid_argument("etcdserver: an empty transaction operation")),
    }
}

/// The key-values a range read found, shaped by the request's options as etcd would:
/// revision filters, sorting, then the limit; and etcd's count (every match).
fn shape(r: &RangeRequest, kvs: Vec<KeyValue>) -> Result<(Vec<KeyValue>, bool, u64), Status> {
    let mut kvs: Vec<KeyValue> = kvs.into_iter().filter(|kv| passes_filters(r, kv)).collect();
    sort(r, &mut kvs)?;
    let count = kvs.len() as u64;
    let limit = non_negative("limit", r.limit)? as usize;
    let more = limit > 0 && kvs.len() > limit;
    if limit > 0 {
        kvs.truncate(limit);
    }
    if r.count_only {
        kvs.clear();
    } else if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok((kvs, more, count))
}

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.calls
            .serve("Range", request, |request| async move {
                let r = request.into_inner();
                let sel = selection(&r.key, &r.range_end)?;
                let limit = non_negative("limit", r.limit)? as usize;
                let wanted_revision = non_negative("revision", r.revision)?;
                let consistency = if r.serializable {
                    Consistency::Stale
                } else {
                    Consistency::Linearizable
                };
                self.core.read_barrier(consistency).await.map_err(status)?;
                let reader = self.core.store.reader();
                let filtered = r.min_mod_revision > 0
                    || r.max_mod_revision > 0
                    || r.min_create_revision > 0
                    || r.max_create_revision > 0;
                let sorted = r.sort_order != SortOrder::None as i32 && r.sort_target != SortTarget::Key as i32;
                // Reads every match when it must filter or sort before the limit applies.
                let store_limit = if limit == 0 || filtered || sorted {
                    usize::MAX
                } else {
                    limit
                };
                // A revision read is rebuilt from the watch history (u64::MAX: the current state).
                if wanted_revision > reader.revision() {
                    return Err(Status::out_of_range(message::FUTURE_REVISION));
                }
                let at = if wanted_revision > 0 { wanted_revision } else { u64::MAX };
                let read = |q: RangeQuery| {
                    reader
                        .range_at(&q, at)
                        .map_err(ApiError::from)?
                        .map_err(|_| Status::out_of_range(message::COMPACTED))
                };
                let result = read(range_query(&r, &sel, store_limit, r.count_only && !filtered)?)?;
                if result.more && store_limit == usize::MAX {
                    return Err(Status::resource_exhausted(format!(
                        "etcdserver: the range holds over {} MiB of keys and values; read it in pages with a limit",
                        MAX_RANGE_BYTES >> 20
                    )));
                }
                let mut header = self.core.header();
                header.revision = result.revision;
                let header = convert::header(Some(header));
                if r.count_only && !filtered {
                    return Ok(Response::new(RangeResponse {
                        header,
                        kvs: Vec::new(),
                        more: false,
                        count: convert::revision(result.count),
                    }));
                }
                let (kvs, mut more, mut count) = shape(&r, result.kvs)?;
                if result.more {
                    // The store stopped at the limit (nothing to filter or sort first): there is
                    // more, and etcd's count is every match, whatever the limit.
                    more = true;
                    count = read(range_query(&r, &sel, usize::MAX, true)?)?.count;
                }
                if r.count_only {
                    more = false;
                }
                let historic = at < result.revision;
                let kvs = kvs
                    .into_iter()
                    .map(|kv| {
                        if historic {
                            self.historic_etcd_kv(kv)
                        } else {
                            self.etcd_kv(kv)
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Response::new(RangeResponse {
                    header,
                    kvs,
                    more,
                    count: convert::revision(count),
                }))
            })
            .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.calls
            .serve("Put", request, |request| async move {
                let (md, _, p) = request.into_parts();
                let original = p.clone();
                let command = match put_op(p)? {
                    TxnOp::Put { key, value, prev_kv } => Command::Put { key, value, prev_kv },
                    TxnOp::PutLeased {
                        key,
                        value,
                        prev_kv,
                        lease,
                    } => Command::PutLeased {
                        key,
                        value,
                        prev_kv,
                        lease,
                    },
                    _ => return Err(Status::internal("a put became another operation")),
                };
                let forward = |mut kv: KvClient<Channel>| {
                    let request = forwarded_request(original.clone(), &md);
                    async move { kv.put(request).await }
                };
                match self.write(command, &md, forward).await? {
                    Done::Forwarded(reply) => Ok(reply),
                    Done::Applied(SmResponse::Put { prev_kv, .. }) => Ok(Response::new(PutResponse {
                        header: self.header(),
                        prev_kv: prev_kv.map(|kv| key_value(to_pb(kv), 0)),
                    })),
                    Done::Applied(other) => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.calls
            .serve("DeleteRange", request, |request| async move {
                let (md, _, d) = request.into_parts();
                let command = match delete_op(&d)? {
                    TxnOp::Delete { key, prev_kv } => Command::Delete { key, prev_kv },
                    TxnOp::DeleteRange { start, end, prev_kv } => Command::DeleteRange { start, end, prev_kv },
                    _ => return Err(Status::internal("a delete became another operation")),
                };
                let forward = |mut kv: KvClient<Channel>| {
                    let request = forwarded_request(d.clone(), &md);
                    async move { kv.delete_range(request).await }
                };
                match self.write(command, &md, forward).await? {
                    Done::Forwarded(reply) => Ok(reply),
                    Done::Applied(SmResponse::Delete { deleted, prev_kvs, .. }) => {
                        Ok(Response::new(DeleteRangeResponse {
                            header: self.header(),
                            deleted: convert::revision(deleted),
                            prev_kvs: prev_kvs.into_iter().map(|kv| key_value(to_pb(kv), 0)).collect(),
                        }))
                    }
                    Done::Applied(other) => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.calls
            .serve("Txn", request, |request| async move {
                let (md, _, t) = request.into_parts();
                let original = t.clone();
                let total = t.compare.len() + t.success.len() + t.failure.len();
                if total > MAX_TXN_OPS {
                    return Err(Status::invalid_argument(
                        "etcdserver: too many operations in txn request",
                    ));
                }
                let (success, success_reads): (Vec<_>, Vec<_>) = t
                    .success
                    .into_iter()
                    .map(txn_op)
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .unzip();
                let (failure, failure_reads): (Vec<_>, Vec<_>) = t
                    .failure
                    .into_iter()
                    .map(txn_op)
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .unzip();
                let txn = Txn {
                    compares: t.compare.into_iter().map(txn_compare).collect::<Result<_, _>>()?,
                    success,
                    failure,
                };
                let forward = |mut kv: KvClient<Channel>| {
                    let request = forwarded_request(original.clone(), &md);
                    async move { kv.txn(request).await }
                };
                match self.write(Command::Txn(txn), &md, forward).await? {
                    Done::Forwarded(reply) => Ok(reply),
                    Done::Applied(SmResponse::Txn { succeeded, results, .. }) => {
                        let header = self.header();
                        let reads = if succeeded { success_reads } else { failure_reads };
                        let responses = results
                            .into_iter()
                            .zip(reads)
                            .map(|(result, read)| self.response_op(result, read.as_ref()))
                            .collect::<Result<_, _>>()?;
                        Ok(Response::new(TxnResponse {
                            header,
                            succeeded,
                            responses,
                        }))
                    }
                    Done::Applied(other) => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn compact(&self, _request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        Err(unimplemented(
            "Compact: raftkv keeps no old versions of keys to compact (its watch history is bounded by \
             --watch-history and trimmed on its own)",
        ))
    }
}

impl EtcdKv {
    fn range_response(&self, kvs: Vec<KeyValue>, read: Option<&RangeRequest>) -> Result<response_op::Response, Status> {
        let (kvs, more, count) = match read {
            Some(r) => shape(r, kvs)?,
            None => {
                let count = kvs.len() as u64;
                (kvs, false, count)
            }
        };
        let kvs: Vec<EtcdKeyValue> = kvs.into_iter().map(|kv| self.etcd_kv(kv)).collect::<Result<_, _>>()?;
        Ok(response_op::Response::ResponseRange(RangeResponse {
            header: None,
            kvs,
            more,
            count: convert::revision(count),
        }))
    }

    fn response_op(&self, result: TxnOpResult, read: Option<&RangeRequest>) -> Result<ResponseOp, Status> {
        let response = match result {
            TxnOpResult::Put { prev_kv } => response_op::Response::ResponsePut(PutResponse {
                header: None,
                prev_kv: prev_kv.map(|kv| key_value(to_pb(kv), 0)),
            }),
            TxnOpResult::Delete { deleted, prev_kvs } => {
                response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                    header: None,
                    deleted: convert::revision(deleted),
                    prev_kvs: prev_kvs.into_iter().map(|kv| key_value(to_pb(kv), 0)).collect(),
                })
            }
            TxnOpResult::Get { kv } => self.range_response(kv.into_iter().collect(), read)?,
            TxnOpResult::Range { kvs } => self.range_response(kvs, read)?,
        };
        Ok(ResponseOp {
            response: Some(response),
        })
    }
}
