//! Building blocks for transactions: compares and operations, so a caller writes
//! `txn::value("k", Op::Equal, "v1")` rather than filling protobuf structs.
//!
//! ```
//! use raftkv_client::pb::TxnRequest;
//! use raftkv_client::txn::{self, Op};
//! // "if version(counter) = 3 then put counter 4 else get counter"
//! let req = TxnRequest {
//!     compare: vec![txn::version("counter", Op::Equal, 3)],
//!     success: vec![txn::put("counter", "4")],
//!     failure: vec![txn::get("counter")],
//! };
//! assert_eq!(req.compare.len(), 1);
//! ```

use raftkv_proto::v1::{txn_op, Compare, CompareOp, CompareTarget, DeleteRequest, GetRequest, PutRequest, TxnOp};

/// A compare operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl Op {
    fn pb(self) -> i32 {
        (match self {
            Op::Equal => CompareOp::Equal,
            Op::NotEqual => CompareOp::NotEqual,
            Op::Less => CompareOp::Less,
            Op::Greater => CompareOp::Greater,
        }) as i32
    }
}

fn compare(key: impl Into<Vec<u8>>, target: CompareTarget, op: Op) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        op: op.pb(),
        ..Default::default()
    }
}

/// `value(key) op value` (false for a missing key).
pub fn value(key: impl Into<Vec<u8>>, op: Op, value: impl Into<Vec<u8>>) -> Compare {
    Compare {
        value: value.into(),
        ..compare(key, CompareTarget::Value, op)
    }
}

/// `version(key) op n` (a missing key has version 0).
pub fn version(key: impl Into<Vec<u8>>, op: Op, n: u64) -> Compare {
    Compare {
        number: n,
        ..compare(key, CompareTarget::Version, op)
    }
}

/// `create_revision(key) op n`.
pub fn create_revision(key: impl Into<Vec<u8>>, op: Op, n: u64) -> Compare {
    Compare {
        number: n,
        ..compare(key, CompareTarget::CreateRevision, op)
    }
}

/// `mod_revision(key) op n`.
pub fn mod_revision(key: impl Into<Vec<u8>>, op: Op, n: u64) -> Compare {
    Compare {
        number: n,
        ..compare(key, CompareTarget::ModRevision, op)
    }
}

/// The key exists.
pub fn exists(key: impl Into<Vec<u8>>) -> Compare {
    Compare {
        exists: true,
        ..compare(key, CompareTarget::Exists, Op::Equal)
    }
}

/// The key does not exist.
pub fn missing(key: impl Into<Vec<u8>>) -> Compare {
    Compare {
        exists: false,
        ..compare(key, CompareTarget::Exists, Op::Equal)
    }
}

/// Put `key` = `value`.
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp {
        op: Some(txn_op::Op::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
            lease: 0,
        })),
    }
}

/// Put `key` = `value`, attached to lease `lease` (the transaction fails with NOT_FOUND, and
/// applies nothing, if the lease is gone).
pub fn put_leased(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: u64) -> TxnOp {
    TxnOp {
        op: Some(txn_op::Op::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
            lease,
        })),
    }
}

/// Read `key` (as the transaction sees it at this point).
pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp {
        op: Some(txn_op::Op::Get(GetRequest {
            key: key.into(),
            consistency: 0,
        })),
    }
}

/// Delete `key`.
pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
    delete_request(DeleteRequest {
        key: key.into(),
        ..Default::default()
    })
}

/// Delete every key starting with `prefix`.
pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> TxnOp {
    delete_request(DeleteRequest {
        key: prefix.into(),
        prefix: true,
        ..Default::default()
    })
}

/// Delete every key in `[start, end)`.
pub fn delete_range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> TxnOp {
    delete_request(DeleteRequest {
        key: start.into(),
        end: end.into(),
        ..Default::default()
    })
}

fn delete_request(d: DeleteRequest) -> TxnOp {
    TxnOp {
        op: Some(txn_op::Op::Delete(d)),
    }
}
