//! Turning client requests into store commands and queries — validating every field on the
//! way, so bad input is refused with a clear INVALID_ARGUMENT before anything reaches the log —
//! and store replies back into API messages.

use raftkv_proto::metadata;
use raftkv_proto::v1::{
    txn_op, txn_op_response, CompareOp, CompareTarget as PbTarget, Consistency, DeleteRequest, DeleteResponse,
    GetResponse, KeyValue as PbKeyValue, PutRequest, PutResponse, RangeRequest, TxnOp as PbTxnOp, TxnOpResponse,
    TxnRequest,
};
use raftkv_store::command::{ClientSession, CmpOp, Command, Compare, CompareTarget, KeyValue, Txn, TxnOp, TxnOpResult};
use raftkv_store::{prefix_end, RangeQuery};

use crate::api::error::ApiError;
use crate::api::limits::{MAX_KEY_BYTES, MAX_RANGE_LIMIT, MAX_RANGE_REPLY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};

/// The exactly-once session of a write, from its request metadata (none if it carries no
/// client id).
pub fn session(md: &tonic::metadata::MetadataMap) -> Result<Option<ClientSession>, ApiError> {
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        match md.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| invalid(format!("metadata {key} must be a decimal number"))),
        }
    };
    let Some(client_id) = number(metadata::CLIENT_ID)? else {
        return Ok(None);
    };
    let seq = number(metadata::REQUEST_SEQ)?.ok_or_else(|| {
        invalid(format!(
            "metadata {} needs {}",
            metadata::CLIENT_ID,
            metadata::REQUEST_SEQ
        ))
    })?;
    let acked_below = number(metadata::ACKED_BELOW)?.unwrap_or(0);
    if acked_below > seq {
        return Err(invalid(format!(
            "{} ({acked_below}) cannot be above the request's own seq ({seq})",
            metadata::ACKED_BELOW
        )));
    }
    Ok(Some(ClientSession {
        client_id,
        seq,
        acked_below,
    }))
}

pub fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

pub fn to_pb(kv: KeyValue) -> PbKeyValue {
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
        return Err(invalid("key is empty; keys must be 1 byte or more"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

pub fn validate_bound(bound: &[u8]) -> Result<(), ApiError> {
    if bound.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "range bound is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
            bound.len()
        )));
    }
    Ok(())
}

pub fn validate_value(value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (1 MiB)",
            value.len()
        )));
    }
    Ok(())
}

pub fn consistency(raw: i32) -> Result<Consistency, ApiError> {
    Consistency::try_from(raw)
        .map_err(|_| invalid(format!("unknown consistency {raw}; use 1 (linearizable) or 2 (stale)")))
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// `[start, end)` from an explicit interval, refusing empty and inverted ones.
fn interval(start: &[u8], end: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
    validate_bound(start)?;
    validate_bound(end)?;
    if end.is_empty() {
        return Ok((start.to_vec(), None));
    }
    if end <= start {
        return Err(invalid(format!(
            "empty or inverted range: end {} must be greater than start {}",
            show(end),
            show(start)
        )));
    }
    Ok((start.to_vec(), Some(end.to_vec())))
}

/// Turns a RangeRequest into a store query, refusing malformed ranges.
pub fn range_query(r: &RangeRequest) -> Result<RangeQuery, ApiError> {
    let (start, end) = if !r.prefix.is_empty() {
        if !r.start.is_empty() || !r.end.is_empty() {
            return Err(invalid("give either prefix or start/end, not both"));
        }
        validate_key(&r.prefix)?;
        (r.prefix.clone(), prefix_end(&r.prefix))
    } else {
        interval(&r.start, &r.end)?
    };
    let limit = match r.limit {
        0 => MAX_RANGE_LIMIT,
        n if n > MAX_RANGE_LIMIT => {
            return Err(invalid(format!(
                "limit {n} is over the most key-values one Range reply holds, {MAX_RANGE_LIMIT}; \
                 ask for at most that many and page on with next_key (limit 0 pages by {MAX_RANGE_LIMIT})"
            )))
        }
        n => n,
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

/// Where the next page of a range starts (see `RangeResponse.next_key`).
pub fn next_key(reverse: bool, last_key: &[u8]) -> Vec<u8> {
    if reverse {
        last_key.to_vec()
    } else {
        let mut k = last_key.to_vec();
        k.push(0);
        k
    }
}

/// A delete: one key, a prefix, or `[key, end)`.
pub fn delete_command(r: &DeleteRequest) -> Result<Command, ApiError> {
    match (r.prefix, r.end.is_empty()) {
        (true, false) => Err(invalid("give either prefix or end, not both")),
        (true, true) => {
            validate_key(&r.key)?;
            Ok(Command::DeleteRange {
                start: r.key.clone(),
                end: prefix_end(&r.key).map(Into::into),
                prev_kv: r.prev_kv,
            })
        }
        (false, false) => {
            let (start, end) = interval(&r.key, &r.end)?;
            Ok(Command::DeleteRange {
                start,
                end: end.map(Into::into),
                prev_kv: r.prev_kv,
            })
        }
        (false, true) => {
            validate_key(&r.key)?;
            Ok(Command::Delete {
                key: r.key.clone(),
                prev_kv: r.prev_kv,
            })
        }
    }
}

/// A put, attached to a lease when the request names one.
pub fn put_command(r: PutRequest) -> Result<Command, ApiError> {
    validate_key(&r.key)?;
    validate_value(&r.value)?;
    Ok(match r.lease {
        0 => Command::Put {
            key: r.key,
            value: r.value,
            prev_kv: r.prev_kv,
        },
        lease => Command::PutLeased {
            key: r.key,
            value: r.value,
            prev_kv: r.prev_kv,
            lease,
        },
    })
}

fn cmp_op(raw: i32, what: &str) -> Result<CmpOp, ApiError> {
    match CompareOp::try_from(raw) {
        Ok(CompareOp::Equal) => Ok(CmpOp::Equal),
        Ok(CompareOp::NotEqual) => Ok(CmpOp::NotEqual),
        Ok(CompareOp::Less) => Ok(CmpOp::Less),
        Ok(CompareOp::Greater) => Ok(CmpOp::Greater),
        _ => Err(invalid(format!(
            "{what}: compare op {raw} is not EQUAL, NOT_EQUAL, LESS or GREATER"
        ))),
    }
}

fn txn_op(op: PbTxnOp, what: &str) -> Result<TxnOp, ApiError> {
    let with = |e: ApiError| match e {
        ApiError::InvalidArgument(m) => invalid(format!("{what}: {m}")),
        other => other,
    };
    match op.op {
        Some(txn_op::Op::Put(p)) => match put_command(p).map_err(with)? {
            Command::Put { key, value, prev_kv } => Ok(TxnOp::Put { key, value, prev_kv }),
            Command::PutLeased {
                key,
                value,
                prev_kv,
                lease,
            } => Ok(TxnOp::PutLeased {
                key,
                value,
                prev_kv,
                lease,
            }),
            _ => unreachable!("put_command builds a Put or PutLeased"),
        },
        Some(txn_op::Op::Delete(d)) => match delete_command(&d).map_err(with)? {
            Command::Delete { key, prev_kv } => Ok(TxnOp::Delete { key, prev_kv }),
            Command::DeleteRange { start, end, prev_kv } => Ok(TxnOp::DeleteRange { start, end, prev_kv }),
            _ => unreachable!("delete_command builds a Delete or DeleteRange"),
        },
        Some(txn_op::Op::Get(g)) => {
            validate_key(&g.key).map_err(with)?;
            Ok(TxnOp::Get { key: g.key })
        }
        None => Err(invalid(format!("{what}: empty operation (set put, delete or get)"))),
    }
}

/// A transaction, with every compare and operation checked.
pub fn txn_command(r: TxnRequest) -> Result<Command, ApiError> {
    let total = r.compare.len() + r.success.len() + r.failure.len();
    if total > MAX_TXN_OPS {
        return Err(invalid(format!(
            "transaction has {total} compares and operations; the limit is {MAX_TXN_OPS}"
        )));
    }
    let mut compares = Vec::with_capacity(r.compare.len());
    for (i, c) in r.compare.into_iter().enumerate() {
        let what = format!("compare {i}");
        validate_key(&c.key).map_err(|e| invalid(format!("{what}: {e}")))?;
        let target = match PbTarget::try_from(c.target) {
            Ok(PbTarget::Value) => {
                validate_value(&c.value)?;
                CompareTarget::Value(cmp_op(c.op, &what)?, c.value.into())
            }
            Ok(PbTarget::Version) => CompareTarget::Version(cmp_op(c.op, &what)?, c.number),
            Ok(PbTarget::CreateRevision) => CompareTarget::CreateRevision(cmp_op(c.op, &what)?, c.number),
            Ok(PbTarget::ModRevision) => CompareTarget::ModRevision(cmp_op(c.op, &what)?, c.number),
            Ok(PbTarget::Exists) => match cmp_op(c.op, &what)? {
                CmpOp::Equal => CompareTarget::Exists(c.exists),
                CmpOp::NotEqual => CompareTarget::Exists(!c.exists),
                _ => return Err(invalid(format!("{what}: EXISTS compares take EQUAL or NOT_EQUAL"))),
            },
            _ => {
                return Err(invalid(format!(
                    "{what}: target {} is not VALUE, VERSION, CREATE_REVISION, MOD_REVISION or EXISTS",
                    c.target
                )))
            }
        };
        compares.push(Compare { key: c.key, target });
    }
    let ops = |list: Vec<PbTxnOp>, branch: &str| -> Result<Vec<TxnOp>, ApiError> {
        list.into_iter()
            .enumerate()
            .map(|(i, op)| txn_op(op, &format!("{branch} operation {i}")))
            .collect()
    };
    Ok(Command::Txn(Txn {
        compares,
        success: ops(r.success, "success")?,
        failure: ops(r.failure, "failure")?,
    }))
}

/// One transaction operation's result as an API message (headers are left empty: the
/// transaction's own header covers them).
pub fn txn_op_response(revision: u64, result: TxnOpResult) -> TxnOpResponse {
    let response = match result {
        TxnOpResult::Put { prev_kv } => txn_op_response::Response::Put(PutResponse {
            header: None,
            revision,
            prev_kv: prev_kv.map(to_pb),
        }),
        TxnOpResult::Delete { deleted, prev_kvs } => txn_op_response::Response::Delete(DeleteResponse {
            header: None,
            revision,
            deleted,
            prev_kv: prev_kvs.first().cloned().map(to_pb),
            prev_kvs: prev_kvs.into_iter().map(to_pb).collect(),
        }),
        TxnOpResult::Get { kv } => txn_op_response::Response::Get(GetResponse {
            header: None,
            kv: kv.map(to_pb),
        }),
        // Only etcd's API builds range reads (`TxnOp::Range`); the native one never gets this.
        TxnOpResult::Range { kvs } => txn_op_response::Response::Get(GetResponse {
            header: None,
            kv: kvs.into_iter().next().map(to_pb),
        }),
    };
    TxnOpResponse {
        response: Some(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::v1::{Compare as PbCompare, GetRequest};

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
    fn a_range_limit_over_the_reply_cap_is_refused_naming_it() {
        let at = RangeRequest {
            prefix: b"a".to_vec(),
            limit: MAX_RANGE_LIMIT,
            ..Default::default()
        };
        assert_eq!(range_query(&at).unwrap().limit as u64, MAX_RANGE_LIMIT);
        let over = RangeRequest {
            limit: MAX_RANGE_LIMIT + 1,
            ..at
        };
        match range_query(&over) {
            Err(ApiError::InvalidArgument(m)) => assert!(m.contains("10000"), "{m}"),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
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
    fn next_key_continues_after_the_last_key() {
        assert_eq!(next_key(false, b"k"), b"k\0");
        assert_eq!(next_key(true, b"k"), b"k");
    }

    #[test]
    fn key_limits() {
        assert!(validate_key(b"").is_err());
        assert!(validate_key(&vec![b'k'; MAX_KEY_BYTES]).is_ok());
        assert!(validate_key(&vec![b'k'; MAX_KEY_BYTES + 1]).is_err());
        assert!(validate_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(validate_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
    }

    #[test]
    fn deletes_pick_single_prefix_or_interval() {
        let d = |key: &str, end: &str, prefix: bool| DeleteRequest {
            key: key.into(),
            end: end.into(),
            prefix,
            prev_kv: false,
        };
        assert!(matches!(
            delete_command(&d("k", "", false)).unwrap(),
            Command::Delete { .. }
        ));
        match delete_command(&d("p/", "", true)).unwrap() {
            Command::DeleteRange { start, end, .. } => {
                assert_eq!(
                    (start, end.map(|e| e.into_vec())),
                    (b"p/".to_vec(), Some(b"p0".to_vec()))
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            delete_command(&d("", "z", false)).unwrap(),
            Command::DeleteRange { .. }
        ));
        for bad in [d("", "", false), d("", "", true), d("k", "z", true), d("z", "a", false)] {
            assert!(
                matches!(delete_command(&bad), Err(ApiError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn txn_validation_names_the_bad_part() {
        let compare = |target: PbTarget, op: CompareOp| PbCompare {
            key: b"k".to_vec(),
            target: target as i32,
            op: op as i32,
            ..Default::default()
        };
        let get = |key: &str| PbTxnOp {
            op: Some(txn_op::Op::Get(GetRequest {
                key: key.into(),
                consistency: 0,
            })),
        };
        let ok = TxnRequest {
            compare: vec![compare(PbTarget::Version, CompareOp::Greater)],
            success: vec![get("k")],
            failure: vec![],
        };
        assert!(txn_command(ok).is_ok());
        let cases = [
            (
                TxnRequest {
                    compare: vec![compare(PbTarget::Unspecified, CompareOp::Equal)],
                    ..Default::default()
                },
                "compare 0: target 0",
            ),
            (
                TxnRequest {
                    compare: vec![compare(PbTarget::Exists, CompareOp::Less)],
                    ..Default::default()
                },
                "EXISTS compares take EQUAL or NOT_EQUAL",
            ),
            (
                TxnRequest {
                    failure: vec![get("ok"), get("")],
                    ..Default::default()
                },
                "failure operation 1: key is empty",
            ),
            (
                TxnRequest {
                    success: vec![PbTxnOp { op: None }],
                    ..Default::default()
                },
                "success operation 0: empty operation",
            ),
            (
                TxnRequest {
                    success: (0..=MAX_TXN_OPS).map(|_| get("k")).collect(),
                    ..Default::default()
                },
                "the limit is 128",
            ),
        ];
        for (txn, expected) in cases {
            match txn_command(txn) {
                Err(ApiError::InvalidArgument(m)) => assert!(m.contains(expected), "{m:?} lacks {expected:?}"),
                other => panic!("expected InvalidArgument containing {expected:?}, got {other:?}"),
            }
        }
    }
}
